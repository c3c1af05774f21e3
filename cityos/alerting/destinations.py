"""Where the notifier sends alert events: webhooks (signed JSON) and e-mail (SMTP).

A destination sends one event once per call to :meth:`Destination.send` and says, when it could
not, whether trying again may help (:class:`DeliveryError` ``retryable``): a timeout, a refused
connection, HTTP 5xx/429 or SMTP 4xx may pass later; HTTP 4xx or SMTP 5xx will not. Retries and
back-off belong to the caller (``cityos.alerting.notify``).

Names identify a destination in the ``alert_deliveries`` table and the logs, so they must be
stable and must not leak secrets: a webhook is ``webhook:<host>#<hash of its URL>`` (a Slack or
Teams URL carries its token in the path), a recipient ``mailto:<address>``.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import smtplib
import ssl
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime
from pathlib import Path
from typing import Any, Literal, Protocol
from urllib.parse import urlsplit

import httpx
from pydantic import SecretStr

from cityos.alerting.events import AlertEvent
from cityos.errors import CityOSError

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-CityOS-Signature"  # "sha256=<hex HMAC-SHA256 of the body>"
EVENT_HEADER = "X-CityOS-Event-Id"
RETRYABLE_HTTP = frozenset({408, 425, 429})  # besides every 5xx
SUBJECT_MAX_CHARS = 120


class NotifyError(CityOSError):
    """Root of the notifier's errors."""


class DeliveryError(NotifyError):
    """One attempt to send an event failed; ``retryable`` says whether another may succeed."""

    def __init__(self, reason: str, *, retryable: bool, retry_after_s: float | None = None):
        self.reason = reason
        self.retryable = retryable
        self.retry_after_s = retry_after_s  # what the receiver asked for (HTTP Retry-After)
        super().__init__(reason)


class Destination(Protocol):
    name: str

    def send(self, event: AlertEvent) -> None:
        """Send the event once; raise DeliveryError when it did not arrive."""

    def close(self) -> None: ...


def sign(body: bytes, secret: str) -> str:
    """The ``X-CityOS-Signature`` value of a webhook body."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify_signature(body: bytes, secret: str, signature: str) -> bool:
    """What a receiver runs: does the header match the body it got (constant-time compare)."""
    return hmac.compare_digest(sign(body, secret), signature)


def webhook_name(url: str) -> str:
    parts = urlsplit(url)
    host = parts.hostname or "?"
    if parts.port:
        host = f"{host}:{parts.port}"
    return f"webhook:{host}#{hashlib.sha256(url.encode()).hexdigest()[:10]}"


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After", "")
    return float(value) if value.strip().isdigit() else None  # the HTTP-date form is ignored


class WebhookDestination:
    """HTTP POST of the event's JSON (``AlertEvent.to_json``); any 2xx is a delivery.

    Redirects are not followed (configure the final URL): a 3xx fails, as does any other 4xx
    than 408/425/429.
    """

    def __init__(
        self,
        url: str,
        *,
        secret: SecretStr | None = None,
        timeout_s: float = 10.0,
    ) -> None:
        if urlsplit(url).scheme not in ("http", "https"):
            raise NotifyError(f"webhook {webhook_name(url)}: expected an http(s) URL")
        self.url = url
        self.name = webhook_name(url)
        self.timeout_s = timeout_s
        self._secret = secret
        self._client = httpx.Client(
            timeout=timeout_s,
            follow_redirects=False,
            headers={"User-Agent": "cityos-notifier"},
        )

    def send(self, event: AlertEvent) -> None:
        body = event.to_json()
        headers = {"Content-Type": "application/json", EVENT_HEADER: event.event_id}
        if self._secret is not None:
            headers[SIGNATURE_HEADER] = sign(body, self._secret.get_secret_value())
        try:
            response = self._client.post(self.url, content=body, headers=headers)
        except httpx.TimeoutException as err:
            what = type(err).__name__
            reason = f"no answer within {self.timeout_s:g} s ({what})"
            raise DeliveryError(reason, retryable=True) from err
        except httpx.HTTPError as err:  # the message names the cause, never the URL
            raise DeliveryError(f"{type(err).__name__}: {err}", retryable=True) from err
        status = response.status_code
        if 200 <= status < 300:
            return
        reason = f"HTTP {status} {response.reason_phrase}".strip()
        retryable = status >= 500 or status in RETRYABLE_HTTP
        raise DeliveryError(reason, retryable=retryable, retry_after_s=_retry_after(response))

    def close(self) -> None:
        self._client.close()


@dataclass(frozen=True)
class SmtpConfig:
    """The relay the notifier hands e-mail to."""

    host: str
    port: int
    sender: str  # the From address
    security: Literal["starttls", "ssl", "none"] = "starttls"  # ssl: implicit TLS (port 465)
    user: str | None = None  # log in when set
    password: SecretStr | None = None
    ca_file: Path | None = None  # a private CA to trust; None: the system's


# One line of the body per field of the alert that has a value, in this order.
BODY_FIELDS = (
    ("Severity", "severity"),
    ("Kind", "kind"),
    ("Status", "status"),
    ("City", "city_id"),
    ("Zone", "zone_id"),
    ("Sensor", "sensor_id"),
    ("Intersection", "intersection_id"),
    ("Metric", "metric"),
    ("Value", "value"),
    ("Threshold", "threshold"),
    ("Started", "started_at"),
    ("Updated", "updated_at"),
    ("Resolved", "resolved_at"),
    ("Alert id", "alert_id"),
)
SUBJECT_LABEL = {  # what the subject's bracket says for each event type
    "firing": "{severity}",
    "updated": "{severity}, updated",
    "acknowledged": "acknowledged",
    "resolved": "resolved",
}


def _text(value: Any) -> str:
    if isinstance(value, datetime):
        return f"{value.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def subject(event: AlertEvent) -> str:
    """``[CityOS critical] PM2.5 in Dongsi above 150``: the label, then the alert's message."""
    label = SUBJECT_LABEL[event.type].format(severity=event.alert.severity)
    lines = event.alert.message.strip().splitlines() or [event.alert.kind]
    text = f"[CityOS {label}] {lines[0]}"
    return text if len(text) <= SUBJECT_MAX_CHARS else text[: SUBJECT_MAX_CHARS - 1] + "…"


def body(event: AlertEvent) -> str:
    alert = event.alert
    fields = [(label, getattr(alert, name)) for label, name in BODY_FIELDS]
    width = max(len(label) for label, _ in BODY_FIELDS) + 2
    lines = [
        f"Alert {event.type} at {_text(event.at)}:",
        "",
        alert.message.strip(),
        "",
        *(f"{label + ':':<{width}}{_text(value)}" for label, value in fields if value is not None),
        "",
        f"-- CityOS notifier, event {event.event_id}",
    ]
    return "\n".join(lines) + "\n"


def compose(event: AlertEvent, sender: str, recipient: str) -> EmailMessage:
    message = EmailMessage()
    message["Subject"] = subject(event)
    message["From"] = sender
    message["To"] = recipient
    message["Date"] = format_datetime(datetime.now(UTC))
    digest = hashlib.sha256(event.event_id.encode()).hexdigest()[:32]
    message["Message-ID"] = f"<{digest}@cityos.alerts>"  # the same for a resend: receivers dedupe
    message["Auto-Submitted"] = "auto-generated"  # RFC 3834: no vacation replies
    message[EVENT_HEADER] = event.event_id
    message["X-CityOS-Alert-Id"] = event.alert.alert_id
    message.set_content(body(event))
    return message


def _smtp_reason(code: int, text: bytes | str) -> str:
    text = text.decode(errors="replace") if isinstance(text, bytes) else text
    return f"SMTP {code} {text}".strip()


class EmailDestination:
    """One recipient: a plain-text message per event through the relay of ``smtp``."""

    def __init__(self, smtp: SmtpConfig, recipient: str, *, timeout_s: float = 10.0) -> None:
        self.smtp = smtp
        self.recipient = recipient
        self.name = f"mailto:{recipient}"
        self.timeout_s = timeout_s

    def _tls(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=self.smtp.ca_file)

    def _connect(self) -> smtplib.SMTP:
        smtp = self.smtp
        if smtp.security == "ssl":
            return smtplib.SMTP_SSL(
                smtp.host, smtp.port, timeout=self.timeout_s, context=self._tls()
            )
        client = smtplib.SMTP(smtp.host, smtp.port, timeout=self.timeout_s)
        if smtp.security == "starttls":
            client.starttls(context=self._tls())
        return client

    def send(self, event: AlertEvent) -> None:
        smtp = self.smtp
        message = compose(event, smtp.sender, self.recipient)
        try:
            with self._connect() as client:
                if smtp.user:
                    password = smtp.password.get_secret_value() if smtp.password else ""
                    client.login(smtp.user, password)
                client.send_message(message, from_addr=smtp.sender, to_addrs=[self.recipient])
        except smtplib.SMTPRecipientsRefused as err:
            code, text = next(iter(err.recipients.values()))
            raise DeliveryError(_smtp_reason(code, text), retryable=400 <= code < 500) from err
        except smtplib.SMTPResponseException as err:  # sender refused, auth, data: by its code
            reason = _smtp_reason(err.smtp_code, err.smtp_error)
            raise DeliveryError(reason, retryable=400 <= err.smtp_code < 500) from err
        except smtplib.SMTPNotSupportedError as err:
            raise DeliveryError(f"the relay refused: {err}", retryable=False) from err
        except TimeoutError as err:
            raise DeliveryError(f"no answer within {self.timeout_s:g} s", retryable=True) from err
        except (smtplib.SMTPException, OSError) as err:  # refused, reset, TLS handshake, ...
            raise DeliveryError(f"{type(err).__name__}: {err}", retryable=True) from err

    def close(self) -> None:
        pass
