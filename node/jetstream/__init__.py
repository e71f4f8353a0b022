"""The JetStream record backend: a node's partitions stored in one NATS JetStream stream.

``connection`` reaches the servers and checks they can promise SYNC, ``stream`` creates or checks
the deployment's stream and scans it, ``subject_log`` is one partition log over one subject,
``stream_reads`` reads its records back from the stream, and ``backend`` puts them together as a
``node.record_log.RecordBackend`` (with snapshots in an object store bucket). See docs/design.md,
"The JetStream backend".
"""
