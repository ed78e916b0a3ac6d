"""The pure core: what an event is (`events`), how its bytes decode (`codec`), how it is checked
and mapped to a contact (`mapping`), which exports want it (`routing`), which records become
changes (`admission`: selection, size, decoding, de-duplication), how changes to one
contact coalesce (`coalesce`, with the compact caches of `recent`), every record in flight until
its one fate (`ledger`), how offsets advance (`offsets`), the errors that say what a caller must
do (`errors`, `reasons`) and the clock.

It imports nothing outside itself but the standard library and fastavro (decoding is a pure
function of bytes): no Kafka, no HTTP, no metrics, no logging. `tests/unit/test_layout.py`
fails when that changes."""
