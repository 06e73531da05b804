"""TLS as users run it in production, on this machine: a CA the test makes, a broker
certificate for 127.0.0.1, a client certificate whose key has a password, and
Debian's stunnel4 terminating TLS (mutual: a client certificate is required) in
front of the embedded broker, which advertises the TLS port. (tansu 0.6's own TLS
did not work in our try: --cert and --key conflict, a combined PEM listens but the
handshake fails.)"""
import contextlib
import shutil
import subprocess
import time
from pathlib import Path

from ddp_kbit.kafka.broker import EmbeddedBroker, wait_port
from ddp_kbit.procs import die_with_parent, free_port

KEY_PASSWORD = "PLANTED-keypass-61d0"


def openssl(*args, cwd):
    r = subprocess.run(["openssl", *args], capture_output=True, text=True, cwd=cwd)
    assert r.returncode == 0, r.stderr


def authority(d: Path, name: str) -> None:
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.pem",
            "-days", "2", "-subj", f"/CN={name}", cwd=d)


def issue(d: Path, ca: str, name: str, san: str | None = None, password: str | None = None) -> None:
    """A key and a certificate signed by ``ca`` (the key encrypted with ``password``)."""
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.plain.key", "-out", f"{name}.csr",
            "-subj", f"/CN={name}", cwd=d)
    ext = d / f"{name}.ext"
    ext.write_text(f"subjectAltName={san}\n" if san else "basicConstraints=CA:FALSE\n")
    openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key", "-CAcreateserial",
            "-out", f"{name}.pem", "-days", "2", "-extfile", ext.name, cwd=d)
    if password:
        openssl("pkcs8", "-topk8", "-in", f"{name}.plain.key", "-out", f"{name}.key", "-passout",
                f"pass:{password}", cwd=d)
        (d / f"{name}.plain.key").unlink()
    else:
        (d / f"{name}.plain.key").rename(d / f"{name}.key")


@contextlib.contextmanager
def tls_broker(d: Path):
    """Yields (bootstrap servers over TLS, the PKI folder): ca.pem, client.pem,
    client.key (password KEY_PASSWORD), and other-ca.pem, a CA that signed nothing."""
    assert shutil.which("stunnel4"), "the TLS tests need Debian's stunnel4 (scripts/test.sh installs it)"
    d.mkdir(parents=True, exist_ok=True)
    authority(d, "ca")
    authority(d, "other-ca")
    issue(d, "ca", "broker", san="IP:127.0.0.1,DNS:localhost")
    issue(d, "ca", "client", password=KEY_PASSWORD)
    plain, tls = free_port(), free_port()
    conf = d / "stunnel.conf"
    conf.write_text(f"foreground = yes\npid =\n[kafka]\naccept = 127.0.0.1:{tls}\nconnect = 127.0.0.1:{plain}\n"
                    f"cert = {d / 'broker.pem'}\nkey = {d / 'broker.key'}\nCAfile = {d / 'ca.pem'}\nverify = 2\n")
    with EmbeddedBroker(d, port=plain, advertised_port=tls):
        proc = subprocess.Popen(["stunnel4", str(conf)], stdout=(d / "stunnel.log").open("wb"),
                                stderr=subprocess.STDOUT, preexec_fn=die_with_parent)
        try:
            wait_port("127.0.0.1", tls, 10, proc)
            time.sleep(0.2)
            yield f"127.0.0.1:{tls}", d
        finally:
            proc.terminate()
            proc.wait(5)
