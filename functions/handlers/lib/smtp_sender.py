"""SMTP delivery over connections kept open across a machine's jobs.

`SmtpSender.send` is blocking (smtplib); the handler runs it with `asyncio.to_thread`. Connections
wait in a small idle pool: with one job at a time a machine holds one connection for all its
jobs, and with several at a time each gets its own. A reused connection may have been closed by
the relay meanwhile (idle timeout); that shows up at MAIL FROM, before anything was committed,
so the sender reconnects once and carries on. A connection that fails later is dropped.

Replies are classified as RFC 5321 says: 4yz is transient (RetryableJobError), 5yz permanent
(PermanentJobError). Connection, TLS and login failures, and the 530/534/538 "authenticate or
encrypt first" replies, are the relay's or the operator's doing, not the job's: always retryable.
Recipients refused while others were accepted do not fail the job (the message went out; a retry
would resend it to the accepted ones): they are reported in `Delivery.refused`. When every
recipient is refused, the job fails, retryably if any refusal was transient.

A connection lost after the final "." but before the relay's reply leaves the outcome unknown
(RFC 1047); the retry may then deliver twice, with the same Message-ID so receivers can dedupe.
"""

from __future__ import annotations

import logging
import smtplib
import ssl
import threading
from dataclasses import dataclass, field
from typing import Final, Self

from shared.errors import JobError, PermanentJobError, RetryableJobError
from shared.settings import Settings

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT_SECONDS: Final = 15.0
MAX_IDLE_CONNECTIONS: Final = 4
_RELAY_POLICY_CODES: Final = frozenset({530, 534, 538})  # RFC 4954: auth / encryption required


@dataclass(frozen=True, slots=True, kw_only=True)
class SmtpConfig:
    """Where and how to reach the relay. `tls_context=None` means the system CAs and hostname checks."""

    host: str
    port: int
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    starttls: bool = True
    timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS
    tls_context: ssl.SSLContext | None = None
    local_hostname: str | None = None  # the EHLO name; None lets smtplib use the host's FQDN

    @classmethod
    def from_settings(cls, settings: Settings) -> Self:
        password = settings.smtp_password.get_secret_value() if settings.smtp_password else None
        return cls(
            host=settings.smtp_host,
            port=settings.smtp_port,
            username=settings.smtp_user,
            password=password,
            starttls=settings.smtp_starttls,
        )


@dataclass(frozen=True, slots=True)
class Refusal:
    """A recipient the relay did not accept, with its reply."""

    address: str
    code: int
    message: str

    @property
    def is_transient(self) -> bool:
        return 400 <= self.code < 500


@dataclass(frozen=True, slots=True)
class Delivery:
    """What the relay accepted: the message went to `accepted`, not to `refused`."""

    accepted: list[str]
    refused: list[Refusal]


class _StaleConnection(Exception):
    """A reused connection turned out to be closed before the transaction started."""


class SmtpSender:
    """Sends messages through one relay, reusing connections. Safe to call from several threads."""

    def __init__(self, config: SmtpConfig, *, max_idle: int = MAX_IDLE_CONNECTIONS) -> None:
        self.config = config
        self._max_idle = max_idle
        self._idle: list[smtplib.SMTP] = []
        self._lock = threading.Lock()

    def send(self, *, sender: str, recipients: list[str], data: bytes) -> Delivery:
        """Send `data` (CRLF message bytes) from `sender` to `recipients`.

        Raises RetryableJobError for transient failures (4yz, connection, TLS, login) and
        PermanentJobError when the relay refuses for good (5yz to MAIL, DATA or every recipient).
        """
        conn, reused = self._acquire()
        try:
            try:
                delivery = self._transact(conn, sender, recipients, data, reused=reused)
            except _StaleConnection:
                _close_quietly(conn)
                logger.info("smtp:reconnect", extra={"host": self.config.host})
                conn = self._connect()
                delivery = self._transact(conn, sender, recipients, data, reused=False)
        except BaseException:
            _close_quietly(conn)
            raise
        self._release(conn)
        return delivery

    def close(self) -> None:
        """Say QUIT on every idle connection."""
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            _close_quietly(conn)

    def _acquire(self) -> tuple[smtplib.SMTP, bool]:
        with self._lock:
            if self._idle:
                return self._idle.pop(), True
        return self._connect(), False

    def _release(self, conn: smtplib.SMTP) -> None:
        with self._lock:
            if len(self._idle) < self._max_idle:
                self._idle.append(conn)
                return
        _close_quietly(conn)

    def _connect(self) -> smtplib.SMTP:
        cfg = self.config
        where = f"{cfg.host}:{cfg.port}"
        try:
            conn = smtplib.SMTP(cfg.host, cfg.port, local_hostname=cfg.local_hostname, timeout=cfg.timeout_seconds)
        except smtplib.SMTPConnectError as exc:
            message = f"SMTP relay {where} refused the connection: {_reply(exc)}"
            raise RetryableJobError(message, kind="smtp-unavailable") from None
        except (OSError, smtplib.SMTPException) as exc:
            raise RetryableJobError(f"cannot reach SMTP relay {where}: {exc}", kind="smtp-unavailable") from None
        try:
            self._start_session(conn)
        except BaseException:
            _close_quietly(conn)
            raise
        return conn

    def _start_session(self, conn: smtplib.SMTP) -> None:
        cfg = self.config
        try:
            conn.ehlo_or_helo_if_needed()
            if cfg.starttls:
                if not conn.has_extn("starttls"):
                    # Never fall back to plaintext when TLS was asked for.
                    raise RetryableJobError("SMTP relay does not offer STARTTLS", kind="smtp-tls-unavailable")
                conn.starttls(context=cfg.tls_context or ssl.create_default_context())
                conn.ehlo()
            if cfg.username is not None:
                conn.login(cfg.username, cfg.password or "")
        except smtplib.SMTPAuthenticationError as exc:
            raise RetryableJobError(f"SMTP relay refused the login: {_reply(exc)}", kind="smtp-auth-failed") from None
        except smtplib.SMTPNotSupportedError as exc:
            raise RetryableJobError(f"SMTP relay cannot log in: {exc}", kind="smtp-auth-failed") from None
        except ssl.SSLError as exc:
            raise RetryableJobError(f"TLS with the SMTP relay failed: {exc}", kind="smtp-tls-failed") from None
        except (OSError, smtplib.SMTPException) as exc:
            raise RetryableJobError(f"SMTP session setup failed: {exc}", kind="smtp-unavailable") from None

    def _transact(
        self, conn: smtplib.SMTP, sender: str, recipients: list[str], data: bytes, *, reused: bool
    ) -> Delivery:
        options = [f"SIZE={len(data)}"] if conn.has_extn("size") else []
        try:
            code, reply = conn.mail(sender, options)
        except (OSError, smtplib.SMTPException) as exc:
            if reused:
                raise _StaleConnection from exc
            raise RetryableJobError(f"SMTP connection lost: {exc}", kind="smtp-unavailable") from None
        if code == 421 and reused:  # the relay timed the idle connection out and says goodbye
            raise _StaleConnection
        if code != 250:
            raise _refused(code, reply, what=f"sender {sender}", kind="sender-refused")
        try:
            delivery = self._recipients_and_data(conn, recipients, data)
        except (OSError, smtplib.SMTPServerDisconnected) as exc:
            raise RetryableJobError(f"SMTP connection lost: {exc}", kind="smtp-unavailable") from None
        return delivery

    def _recipients_and_data(self, conn: smtplib.SMTP, recipients: list[str], data: bytes) -> Delivery:
        accepted: list[str] = []
        refused: list[Refusal] = []
        for address in recipients:
            code, reply = conn.rcpt(address)
            if code in (250, 251):
                accepted.append(address)
            else:
                refused.append(Refusal(address, code, _text(reply)))
            if code == 421:  # the relay is closing the connection: nothing more will be accepted
                raise RetryableJobError(f"SMTP relay closed the session: {_text(reply)}", kind="smtp-unavailable")
        if not accepted:
            raise _all_refused(refused)
        try:
            code, data_reply = conn.data(data)
        except smtplib.SMTPDataError as exc:  # DATA itself refused (no 354)
            raise _refused(exc.smtp_code, exc.smtp_error, what="message", kind="message-refused") from None
        if code != 250:
            raise _refused(code, data_reply, what="message", kind="message-refused")
        return Delivery(accepted=accepted, refused=refused)


def _all_refused(refused: list[Refusal]) -> JobError:
    summary = "; ".join(f"{r.address} ({r.code} {r.message})" for r in refused)
    if any(r.is_transient for r in refused):
        return RetryableJobError(f"every recipient was refused, some transiently: {summary}", kind="recipients-refused")
    return PermanentJobError(f"every recipient was refused: {summary}", kind="recipients-refused")


def _refused(code: int, reply: bytes | str, *, what: str, kind: str) -> JobError:
    message = f"SMTP relay refused the {what}: {code} {_text(reply)}"
    if code in _RELAY_POLICY_CODES:
        # "Authentication required", "Must issue STARTTLS first": the relay's setup, not this job.
        return RetryableJobError(message, kind="smtp-auth-failed")
    if 500 <= code < 600:
        return PermanentJobError(message, kind=kind)
    return RetryableJobError(message, kind=kind)  # 4yz, and anything unexpected


def _reply(exc: smtplib.SMTPResponseException) -> str:
    return f"{exc.smtp_code} {_text(exc.smtp_error)}"


def _text(reply: bytes | str) -> str:
    return reply.decode("utf-8", "replace") if isinstance(reply, bytes) else reply


def _close_quietly(conn: smtplib.SMTP) -> None:
    try:
        conn.quit()
    except (OSError, smtplib.SMTPException):
        pass
    finally:
        conn.close()
