"""Long-running servers: the remote latency agent (:mod:`.agent`) on a target CPU, and a
read-only server for a folder of reports (:mod:`.serve`)."""
