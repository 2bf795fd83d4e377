"""A local HTTPS server that answers TrainJob progress updates as Kubeflow Trainer's status server does.

Rules taken from kubeflow/trainer@v2.3.0: pkg/statusserver/server.go (POST
/apis/trainer.kubeflow.org/v1alpha1/namespaces/{namespace}/trainjobs/{name}/status, a 64 KiB body limit,
`Authorization: Bearer <token>` else 403, an undecodable body 422, `trainerStatus: null` echoed with 200,
errors as a metav1.Status JSON), pkg/statusserver/auth.go (the token is checked; here against the file
content instead of OIDC) and pkg/apis/trainer/v1alpha1/trainjob_types.go (the CRD bounds the status apply
enforces: progressPercentage and estimatedRemainingSeconds int32 in 0..100 and >= 0, at most 256 metrics,
name and value strings of 1..64 characters, lastUpdatedTime an RFC 3339 time). TLS with a CA made for the
test, as the controller serves with its webhook certificate.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

PATH = re.compile(r"^/apis/trainer\.kubeflow\.org/v1alpha1/namespaces/([^/]+)/trainjobs/([^/]+)/status$")
MAX_BODY = 1 << 16


def make_ca_and_cert(out: Path, name: str = "test") -> tuple[Path, Path, Path]:
    """(ca.crt, server.crt, server.key) for 127.0.0.1 / localhost, signed by a fresh CA."""
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{name} CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
          .not_valid_after(now + dt.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                       crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    import ipaddress

    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "trainer-status")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    out.mkdir(parents=True, exist_ok=True)
    (out / "ca.crt").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (out / "server.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (out / "server.key").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                       serialization.NoEncryption()))
    return out / "ca.crt", out / "server.crt", out / "server.key"


def _problems(status: dict) -> list[str]:
    out = []
    for key in ("progressPercentage", "estimatedRemainingSeconds"):
        value = status.get(key)
        if value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 2**31:
            out.append(f"{key}: {value!r} is not an int32 >= 0")
        elif key == "progressPercentage" and value > 100:
            out.append(f"{key}: {value} > 100")
    metrics = status.get("metrics") or []
    if len(metrics) > 256:
        out.append("metrics: more than 256 items")
    for m in metrics:
        for field in ("name", "value"):
            v = m.get(field)
            if not isinstance(v, str) or not 1 <= len(v) <= 64:
                out.append(f"metrics[].{field}: {v!r} is not a string of 1..64 characters")
    stamp = status.get("lastUpdatedTime")
    if stamp is not None:
        try:
            dt.datetime.fromisoformat(stamp)
        except (TypeError, ValueError):
            out.append(f"lastUpdatedTime: {stamp!r} is not RFC 3339")
    return out


class StatusServer:
    def __init__(self, cert: Path, key: Path, token: str, namespace: str = "team-a", name: str = "gbc-run") -> None:
        self.token, self.namespace, self.name = token, namespace, name
        self.accepted: list[tuple[float, dict]] = []
        self.rejected: list[tuple[int, str]] = []
        self._ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._ctx.load_cert_chain(cert, key)
        self._server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        port = self._server.server_address[1]
        return (f"https://127.0.0.1:{port}/apis/trainer.kubeflow.org/v1alpha1/namespaces/{self.namespace}"
                f"/trainjobs/{self.name}/status")

    def start(self) -> StatusServer:
        srv = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                return

            def _answer(self, code: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _fail(self, code: int, message: str, reason: str) -> None:
                srv.rejected.append((code, message))
                self._answer(code, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": message,
                                    "reason": reason, "code": code})

            def do_GET(self) -> None:
                self._fail(404, "Not found", "NotFound")

            def do_POST(self) -> None:
                m = PATH.match(self.path)
                if not m:
                    return self._fail(404, "Not found", "NotFound")
                if m.groups() != (srv.namespace, srv.name):
                    return self._fail(403, "Forbidden", "Forbidden")  # the token's audience names one TrainJob
                parts = self.headers.get("Authorization", "").split()
                if len(parts) != 2 or parts[0].lower() != "bearer" or parts[1] != srv.token:
                    return self._fail(403, "Forbidden", "Forbidden")
                length = int(self.headers.get("Content-Length", "0"))
                if length > MAX_BODY:
                    return self._fail(413, "Request body too large", "RequestEntityTooLarge")
                try:
                    body = json.loads(self.rfile.read(length))
                except ValueError:
                    return self._fail(422, "Invalid payload", "Invalid")
                status = body.get("trainerStatus") if isinstance(body, dict) else None
                if status is None:
                    return self._answer(200, body)
                problems = _problems(status)
                if problems:
                    return self._fail(422, "; ".join(problems), "Invalid")
                srv.accepted.append((time.monotonic(), status))
                return self._answer(200, body)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.socket = self._ctx.wrap_socket(self._server.socket, server_side=True)
        threading.Thread(target=self._server.serve_forever, name="trainjob-status", daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
