"""ACME (RFC 8555) over HTTPS: ``jws`` checks request signatures (and holds the JOSE
helpers), ``ari`` reads RFC 9773 certificate identifiers, ``problems`` turns ca_core's errors
into problem documents, ``wfe`` serves the resources; the rules are in ``ca_core.acme``."""
