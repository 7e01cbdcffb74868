"""The validation authority: ACME challenge checks over the network (RFC 8555 section 8).

It implements ``ca_core.acme.ChallengeValidator``; ca_core itself does no network I/O (as
Boulder's VA is apart from its RA). The gateway wires it in (``gateway.runtime``)."""
