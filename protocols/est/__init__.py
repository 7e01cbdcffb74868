"""EST, Enrollment over Secure Transport (RFC 7030, with the RFC 8951 clarifications).

``codec`` turns request bodies (base64 PKCS#10), Basic credentials and client-certificate
headers into bytes and values, and encodes responses (certs-only, csrattrs, the
serverkeygen multipart and plain-text errors); ``http`` serves ``/.well-known/est/`` and
``/.well-known/est/{label}/`` on the EST listener. Every decision is ``ca_core.est``'s.
"""
