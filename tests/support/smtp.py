"""A real SMTP server for tests: aiosmtpd in its own thread on a free loopback port.

It records every message with the connection it arrived on, can be told to answer a given
recipient (`refuse_recipient`), the sender (`sender_reply`) or the DATA (`data_reply`) with any
reply (`"451 4.3.0 try later"`, `"550 5.1.1 no such user"`), can drop its open connections (a
relay's idle timeout), and optionally requires STARTTLS with a self-signed certificate and AUTH
with one user:

    with running_smtp_server(tls=make_tls_files(tmp_path), credentials=("user", "pw")) as server:
        settings = make_settings(database_url, s3, **server.settings_overrides())
        ...
        assert server.messages[0].parsed()["Subject"] == "Hello"

The thread runs its own event loop, so the server answers whatever the test's loop is doing
(blocking smtplib calls in `asyncio.to_thread`, or a function machine in a subprocess).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path
from typing import Any, cast

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

HOST = "127.0.0.1"
SERVER_NAME = "smtp.test"


@dataclass(frozen=True, slots=True)
class ReceivedMessage:
    """One message as the server received it."""

    mail_from: str
    rcpt_tos: list[str]
    data: bytes
    connection: int  # serial number of the TCP connection it came on (1, 2, ...)
    tls: bool
    login: str | None

    def parsed(self) -> EmailMessage:
        message = BytesParser(policy=policy.default).parsebytes(self.data)
        assert isinstance(message, EmailMessage)
        return message


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """A self-signed certificate for localhost and 127.0.0.1, and its key."""

    cert_path: Path
    key_path: Path

    def server_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert_path, self.key_path)
        return context

    def client_context(self) -> ssl.SSLContext:
        """A client context that trusts only this certificate (hostname checks stay on)."""
        return ssl.create_default_context(cafile=str(self.cert_path))


def make_tls_files(directory: Path) -> TlsFiles:
    """Write a fresh self-signed certificate (EC P-256, valid for a day) into `directory`."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address(HOST))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = directory / "smtp-cert.pem", directory / "smtp-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return TlsFiles(cert_path=cert_path, key_path=key_path)


class _Connection(SMTP):
    """aiosmtpd makes one of these per TCP connection; it carries that connection's number."""

    serial: int = 0


class _Handler:
    """aiosmtpd hooks: answer as configured, record what is accepted."""

    def __init__(self, server: SmtpTestServer) -> None:
        self.server = server

    async def handle_MAIL(
        self, smtp: SMTP, session: Session, envelope: Envelope, address: str, mail_options: list[str]
    ) -> str:
        if self.server.sender_reply is not None:
            return self.server.sender_reply
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(
        self, smtp: SMTP, session: Session, envelope: Envelope, address: str, rcpt_options: list[str]
    ) -> str:
        reply = self.server.recipient_replies.get(address.lower())
        if reply is not None:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, smtp: SMTP, session: Session, envelope: Envelope) -> str:
        if self.server.data_reply is not None:
            return self.server.data_reply
        login = session.auth_data.login.decode() if isinstance(session.auth_data, LoginPassword) else None
        message = ReceivedMessage(
            mail_from=str(envelope.mail_from),
            rcpt_tos=list(envelope.rcpt_tos),
            data=bytes(cast(bytes, envelope.original_content)),
            connection=cast(_Connection, smtp).serial,
            tls=session.ssl is not None,
            login=login,
        )
        with self.server._lock:
            self.server.messages.append(message)
        return "250 2.0.0 Message accepted"

    async def handle_QUIT(self, smtp: SMTP, session: Session, envelope: Envelope) -> str:
        with self.server._lock:
            self.server.quits += 1
        return "221 Bye"


class _Controller(Controller):
    def __init__(self, server: SmtpTestServer, **smtp_kwargs: Any) -> None:
        super().__init__(_Handler(server), hostname=HOST, port=0, server_hostname=SERVER_NAME, **smtp_kwargs)
        self._test_server = server

    def factory(self) -> SMTP:
        connection = _Connection(self.handler, **self.SMTP_kwargs)
        connection.serial = self._test_server._connection_made(connection)
        return connection

    def _trigger_server(self) -> None:
        # Bound to port 0: learn the real port before the base class probes it.
        assert isinstance(self.server, asyncio.Server)
        self.port = self.server.sockets[0].getsockname()[1]
        super()._trigger_server()


class SmtpTestServer:
    """The server; start it with `running_smtp_server()`."""

    def __init__(
        self, *, tls: TlsFiles | None = None, credentials: tuple[str, str] | None = None, require_starttls: bool = True
    ) -> None:
        if credentials is not None and tls is None:
            # aiosmtpd offers AUTH only after STARTTLS (and warns otherwise), as real relays do.
            raise ValueError("AUTH needs TLS")
        self.tls = tls
        self.credentials = credentials
        self.messages: list[ReceivedMessage] = []
        self.recipient_replies: dict[str, str] = {}
        self.sender_reply: str | None = None
        self.data_reply: str | None = None
        self.connections = 0  # TCP connections accepted since start (the startup probe excluded)
        self.quits = 0  # QUIT commands received (a client closing politely)
        self._lock = threading.Lock()
        self._open: set[SMTP] = set()
        kwargs: dict[str, Any] = {}
        if tls is not None:
            kwargs.update(tls_context=tls.server_context(), require_starttls=require_starttls)
        if credentials is not None:
            kwargs.update(auth_required=True, authenticator=self._authenticate)
        self._controller = _Controller(self, **kwargs)

    @property
    def host(self) -> str:
        return HOST

    @property
    def port(self) -> int:
        return int(self._controller.port)

    def start(self) -> None:
        self._controller.start()
        with self._lock:
            self.connections = 0

    def stop(self) -> None:
        self._controller.stop()

    def refuse_recipient(self, address: str, reply: str) -> None:
        """Answer RCPT TO:<address> with `reply`, e.g. "550 5.1.1 no such user"."""
        self.recipient_replies[address.lower()] = reply

    def settings_overrides(self) -> dict[str, object]:
        """Settings fields that point the service at this server."""
        user, password = self.credentials or (None, None)
        return {
            "smtp_host": self.host,
            "smtp_port": self.port,
            "smtp_user": user,
            "smtp_password": password,
            "smtp_starttls": self.tls is not None,
        }

    def drop_connections(self) -> None:
        """Close every open connection from the server side, as a relay's idle timeout would."""

        async def close_all() -> None:
            for connection in list(self._open):
                if connection.transport is not None:
                    connection.transport.close()

        asyncio.run_coroutine_threadsafe(close_all(), self._controller.loop).result(timeout=10)

    def _connection_made(self, connection: SMTP) -> int:
        with self._lock:
            self.connections += 1
            self._open.add(connection)
            return self.connections

    def _authenticate(
        self, smtp: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any
    ) -> AuthResult:
        ok = (
            isinstance(auth_data, LoginPassword)
            and self.credentials is not None
            and (auth_data.login.decode(), auth_data.password.decode()) == self.credentials
        )
        return AuthResult(success=ok, handled=False, auth_data=auth_data)


@contextmanager
def running_smtp_server(
    *, tls: TlsFiles | None = None, credentials: tuple[str, str] | None = None, require_starttls: bool = True
) -> Iterator[SmtpTestServer]:
    """Start a server for the block, stop it (thread joined) after."""
    server = SmtpTestServer(tls=tls, credentials=credentials, require_starttls=require_starttls)
    server.start()
    try:
        yield server
    finally:
        server.stop()
