"""RFC 3161 time-stamping over HTTP (RFC 3161 3.4), with RFC 5816 tokens.

``codec`` turns a TimeStampReq into a ``ca_core.tsa.TimeStampQuery`` and encodes
TimeStampResp (granted, or rejection with its failInfo); ``http`` serves ``POST /tsa`` and
``GET /tsa/chain.pem``. Deciding and signing is ``ca_core.tsa``'s.
"""
