"""OCSP over HTTP (RFC 6960 appendix A, RFC 5019 / RFC 9919 lightweight profile).

``codec`` turns request DER into a ``ca_core.ocsp.OcspQuery`` and maps errors to OCSP
response statuses; ``http`` serves ``POST /ocsp`` and ``GET /ocsp/{base64}``.
"""
