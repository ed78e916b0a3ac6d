"""One-off jobs over a topic, beside the service: `check` (can the connector reach everything),
`dryrun` (what a sync would send), `reconcile` (does Omnisend match the topic) and `runner`
(reading a span of a topic with assigned partitions, for `backfill` and `replay-dlq`). May
import the core, the Kafka edge, the Omnisend client and the composition root."""
