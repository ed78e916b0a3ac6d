"""The Kafka edge: consumer, producer and admin configuration (`clients`), the dead-letter and
results topics (`dlq`, `results`), consumer lag (`lag`) and the Schema Registry (`registry`).
May import the core; not the Omnisend side, the jobs or the command line."""
