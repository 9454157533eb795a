"""Email through an SMTP relay (smtplib in a worker thread: no blocking in the event loop).

Security is ``starttls`` (submission, port 587), ``tls`` (implicit TLS, 465)
or ``none`` (a local relay). 4xx replies and connection errors are transient
(retried later); 5xx replies fail for good. The recipient address is never
logged.
"""

from __future__ import annotations

import asyncio
import smtplib
import ssl
from email.message import EmailMessage
from email.utils import formatdate, make_msgid

from services.notifier.fcm import Outcome
from services.notifier.settings import NotifierSettings


class SmtpSender:
    def __init__(self, settings: NotifierSettings) -> None:
        self.settings = settings

    def build(self, to: str, subject: str, body: str, notification: str) -> EmailMessage:
        message = EmailMessage()
        message["From"] = self.settings.notifier_smtp_from
        message["To"] = to
        message["Subject"] = subject
        message["Date"] = formatdate(localtime=False)
        message["Message-ID"] = make_msgid(domain="tips.app")
        # Lets support trace a mail back to the log row without the address.
        message["X-Tips-Notification"] = notification
        message.set_content(body)
        return message

    async def send(self, message: EmailMessage) -> Outcome:
        return await asyncio.to_thread(self._send_blocking, message)

    def _send_blocking(self, message: EmailMessage) -> Outcome:
        s = self.settings
        try:
            smtp: smtplib.SMTP
            if s.notifier_smtp_security == "tls":
                smtp = smtplib.SMTP_SSL(
                    s.notifier_smtp_host,
                    s.notifier_smtp_port,
                    timeout=s.notifier_smtp_timeout_seconds,
                    context=ssl.create_default_context(),
                )
            else:
                smtp = smtplib.SMTP(
                    s.notifier_smtp_host,
                    s.notifier_smtp_port,
                    timeout=s.notifier_smtp_timeout_seconds,
                )
            with smtp:
                if s.notifier_smtp_security == "starttls":
                    smtp.starttls(context=ssl.create_default_context())
                if s.notifier_smtp_username:
                    smtp.login(
                        s.notifier_smtp_username, s.notifier_smtp_password.get_secret_value()
                    )
                refused = smtp.send_message(message)
        except smtplib.SMTPRecipientsRefused as exc:
            codes = [code for code, _ in exc.recipients.values()]
            transient = codes and all(400 <= c < 500 for c in codes)
            return Outcome(
                "retry" if transient else "fail",
                f"SMTP recipient refused ({', '.join(map(str, codes))})",
            )
        except smtplib.SMTPResponseException as exc:
            transient = 400 <= exc.smtp_code < 500
            return Outcome("retry" if transient else "fail", f"SMTP {exc.smtp_code}")
        except (smtplib.SMTPException, OSError) as exc:
            return Outcome("retry", f"SMTP not reachable: {type(exc).__name__}")
        if refused:
            return Outcome("fail", "SMTP recipient refused")
        return Outcome("ok")
