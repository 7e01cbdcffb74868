"""ACME (RFC 8555) over HTTPS: ``jws`` checks request signatures, ``wfe`` serves the
resources; the rules are in ``ca_core.acme``."""
