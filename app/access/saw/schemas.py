"""The SAW registry's request and response shapes."""

from __future__ import annotations

import re
from datetime import datetime

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from pydantic import BaseModel, ConfigDict, Field, model_validator

from app.identity.staff.schemas import SUBJECT_PATTERN

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
LABEL_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9 ._:#/-]{0,127}$"
REASON_PATTERN = r"^[\x20-\x7e]{1,64}$"


class SawRegister(BaseModel):
    """Give the device's client certificate (PEM) or its SHA-256 fingerprint, not both."""

    owner: str = Field(pattern=SUBJECT_PATTERN, description="The staff member the device belongs to.")
    label: str = Field(pattern=LABEL_PATTERN, description="Asset tag or host name, e.g. `SAW-EU-0042`.")
    cert_pem: str | None = Field(default=None, max_length=16384,
                                 description="The SAW's client certificate, PEM; voicelog hashes its DER.")
    cert_sha256: str | None = Field(default=None, max_length=100,
                                    description="SHA-256 over the certificate's DER: 64 hex digits, colons allowed.")

    @model_validator(mode="after")
    def _one_fingerprint(self) -> SawRegister:
        if (self.cert_pem is None) == (self.cert_sha256 is None):
            raise ValueError("give exactly one of cert_pem and cert_sha256")
        if self.cert_pem is not None:
            if self.cert_pem.count("-----BEGIN CERTIFICATE-----") != 1:
                raise ValueError("cert_pem must hold exactly one certificate")
            try:
                cert = x509.load_pem_x509_certificate(self.cert_pem.encode("ascii"))
            except (ValueError, UnicodeEncodeError):
                raise ValueError("cert_pem is not a PEM certificate") from None
            self.cert_sha256 = cert.fingerprint(hashes.SHA256()).hex()
            self.cert_pem = None
        else:
            assert self.cert_sha256 is not None  # noqa: S101 - checked above
            normalized = self.cert_sha256.strip().replace(":", "").lower()
            if not _HEX64.fullmatch(normalized):
                raise ValueError("cert_sha256 must be 64 hex digits (colons allowed)")
            self.cert_sha256 = normalized
        return self

    @property
    def fingerprint(self) -> str:
        assert self.cert_sha256 is not None  # noqa: S101 - set by the validator
        return self.cert_sha256


class SawRevoke(BaseModel):
    reason: str = Field(pattern=REASON_PATTERN, description="Short reason, e.g. `lost`, `reimaged`, `left`.")


class SawOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    cert_sha256: str
    owner_subject: str
    label: str
    registered_at: datetime
    registered_by: str
    revoked_at: datetime | None
    revoked_by: str | None
    revoke_reason: str | None
