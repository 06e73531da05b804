"""A TLS handshake with the brokers before any client is made, with the run's own CA,
certificate, key and key password. Both clients meet a wrong CA, a key password that
does not open the key, or a broker that wants a client certificate only as a
"transport failure" after their whole timeout; this says which, in one line, at once."""
from __future__ import annotations

import socket
import ssl

from ddp_kbit.config import KafkaConfig
from ddp_kbit.errors import ClientError


def context(cfg: KafkaConfig) -> ssl.SSLContext:
    """The TLS context the run's settings describe (the system's CAs without --ssl-cafile)."""
    try:
        ctx = ssl.create_default_context(cafile=cfg.ssl_cafile)
    except (OSError, ssl.SSLError) as exc:
        raise ClientError(f"cannot read --ssl-cafile {cfg.ssl_cafile}: {_why(exc)}") from None
    if cfg.ssl_certfile:
        try:
            ctx.load_cert_chain(cfg.ssl_certfile, cfg.ssl_keyfile, password=cfg.ssl_password)
        except ssl.SSLError:
            raise ClientError(f"cannot use the client certificate --ssl-certfile {cfg.ssl_certfile} with --ssl-keyfile "
                              f"{cfg.ssl_keyfile}: the key does not open with --ssl-password, or they are not a PEM "
                              "certificate and its key") from None
        except OSError as exc:
            raise ClientError(f"cannot read --ssl-certfile {cfg.ssl_certfile} / --ssl-keyfile {cfg.ssl_keyfile}: "
                              f"{exc.strerror}") from None
    return ctx


def check(cfg: KafkaConfig) -> None:
    """Handshake with the first bootstrap server that answers; an unreachable one is
    left to the clients (they say so in their own words)."""
    if not cfg.security_protocol.endswith("SSL") or not cfg.bootstrap_servers:
        return
    ctx = context(cfg)
    for server in cfg.bootstrap_servers.split(","):
        host, _, port = server.strip().rpartition(":")
        try:
            sock = socket.create_connection((host, int(port)), timeout=cfg.request_timeout_s)
        except (OSError, ValueError):
            continue
        try:
            _handshake(ctx, sock, host, server, cfg)
        finally:
            sock.close()
        return


def _handshake(ctx: ssl.SSLContext, sock: socket.socket, host: str, server: str, cfg: KafkaConfig) -> None:
    try:
        with ctx.wrap_socket(sock, server_hostname=host) as tls:
            tls.settimeout(0.3)   # TLS 1.3: a broker that wants a client certificate says so after the handshake
            try:
                closed = tls.recv(1) == b""
            except TimeoutError:
                closed = False
    except ssl.SSLCertVerificationError as exc:
        raise ClientError(f"TLS with {server}: the broker's certificate is not trusted: {exc.verify_message} "
                          f"(--ssl-cafile {cfg.ssl_cafile or 'not given: the system CAs'})") from None
    except ssl.SSLError as exc:
        closed = "certificate required" in str(exc) or "CERTIFICATE_REQUIRED" in str(exc)
        if not closed:
            raise ClientError(f"TLS with {server} failed: {_why(exc)}") from None
    except OSError:
        closed = True
    if closed and not cfg.ssl_certfile:
        raise ClientError(f"TLS with {server}: the broker closed the connection; it wants a client certificate "
                          "(--ssl-certfile and --ssl-keyfile)")
    if closed:
        raise ClientError(f"TLS with {server}: the broker closed the connection after the handshake; it does not "
                          f"accept the client certificate --ssl-certfile {cfg.ssl_certfile}")


def _why(exc: BaseException) -> str:
    return getattr(exc, "reason", None) or getattr(exc, "strerror", None) or str(exc)
