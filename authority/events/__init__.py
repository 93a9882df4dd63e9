"""Security events (RFC 8417 SETs) pushed to receivers (RFC 8935), one concern a module: ``set`` (what happened,
and the SET that says it: pure), ``outbox`` (the audit entry and the events a state change writes with itself),
``push`` (one POST to a receiver, and what its answer means), ``lease`` (one deliverer per receiver at a time),
``delivery`` (the consumer groups: in order, retried, dead-lettered, bounded), ``dead_letters`` (what no retry
delivered, and putting it back)."""
