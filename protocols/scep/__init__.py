"""SCEP (RFC 8894) over HTTP (RFC 8894 4): ``http`` serves ``/scep`` and
``/scep/{org}/{profile}`` on the HTTP listener. Deciding, decrypting and signing is
``ca_core.scep``'s; the CMS attributes are ``ca_core.scep_attributes``'."""
