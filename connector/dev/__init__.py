"""For trying the connector and testing with it, not for production: the bundled Kafka-protocol
broker (`broker`), the event generator (`generate`), the end-to-end demo (`demo`) and the pytest
plugin serving the Omnisend simulator (`testing`)."""
