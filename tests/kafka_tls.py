"""A throwaway TLS + SASL Kafka for security tests: a private CA made with the `openssl` CLI, and a second
single-node KRaft broker (the project's jars, its own temp dir and free ports) with a SASL_SSL listener that
takes PLAIN and SCRAM-SHA-256. The project's own broker on :9092 is never touched."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
KAFKA_LIBS = ROOT / ".cache" / "kafka" / "libs"
LOG4J_CONFIG = ROOT / "kafka" / "log4j2.properties"  # writes ${sys:kafka.logs.dir}/server.log

# Users the broker knows. `admin` is also what the broker uses to talk to itself (inter-broker, PLAIN).
ADMIN_USER, ADMIN_PASSWORD = "admin", "admin-secret"
APP_USER, APP_PASSWORD = "app", "app-secret"


@dataclass(frozen=True)
class Pki:
    ca: Path  # signs the broker certificate
    other_ca: Path  # unrelated CA: a client that trusts only this one must refuse the broker
    broker_cert: Path
    broker_key: Path
    keystore: Path  # PEM key store for the broker: private key (PKCS#8, unencrypted) + certificate chain


def _openssl(*args: str, cwd: Path) -> None:
    result = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args)} failed:\n{result.stderr}")


def _make_ca(directory: Path, name: str) -> Path:
    _openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN={name}",
        "-keyout", f"{name}.key", "-out", f"{name}.pem",
        "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        cwd=directory,
    )  # fmt: skip
    return directory / f"{name}.pem"


def make_pki(directory: Path) -> Pki:
    """A CA, a broker certificate it signs for 127.0.0.1 and localhost, and a second, unrelated CA."""
    directory.mkdir(parents=True, exist_ok=True)
    ca = _make_ca(directory, "test-ca")
    other_ca = _make_ca(directory, "other-ca")
    (directory / "broker.ext").write_text(
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth\n"
        "subjectKeyIdentifier=hash\n"
        "authorityKeyIdentifier=keyid,issuer\n"
    )
    _openssl(
        "req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost",
        "-keyout", "broker.key", "-out", "broker.csr",
        cwd=directory,
    )  # fmt: skip
    _openssl(
        "x509", "-req", "-in", "broker.csr", "-CA", "test-ca.pem", "-CAkey", "test-ca.key", "-CAcreateserial",
        "-days", "2", "-extfile", "broker.ext", "-out", "broker.pem",
        cwd=directory,
    )  # fmt: skip
    key, cert = directory / "broker.key", directory / "broker.pem"
    keystore = directory / "broker-keystore.pem"
    keystore.write_text(key.read_text() + cert.read_text())
    return Pki(ca=ca, other_ca=other_ca, broker_cert=cert, broker_key=key, keystore=keystore)


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _tail(path: Path, lines: int) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"({path} not readable)"


class SecureKafka:
    """A single-node KRaft broker: SASL_SSL on `port` (PLAIN and SCRAM-SHA-256 users), PLAINTEXT controller."""

    mechanisms = ("PLAIN", "SCRAM-SHA-256")

    def __init__(self, directory: Path, pki: Pki) -> None:
        self.dir = directory
        self.pki = pki
        self.port = _free_port()
        self.controller_port = _free_port()
        while self.controller_port == self.port:
            self.controller_port = _free_port()
        self.bootstrap = f"127.0.0.1:{self.port}"
        self.config = directory / "server.properties"
        self.server_log = directory / "server.log"
        self.stdout_log = directory / "stdout.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def _java(self, *args: str) -> list[str]:
        return [
            "java", "-Xms128m", "-Xmx384m", "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={LOG4J_CONFIG}", f"-Dkafka.logs.dir={self.dir}",
            "-cp", f"{KAFKA_LIBS}/*", *args,
        ]  # fmt: skip

    def _write_config(self) -> None:
        plain_users = f'user_{ADMIN_USER}="{ADMIN_PASSWORD}" user_{APP_USER}="{APP_PASSWORD}"'
        self.config.write_text(
            f"""process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:{self.controller_port}
listeners=SASL_SSL://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}
advertised.listeners=SASL_SSL://127.0.0.1:{self.port}
controller.listener.names=CONTROLLER
inter.broker.listener.name=SASL_SSL
listener.security.protocol.map=CONTROLLER:PLAINTEXT,SASL_SSL:SASL_SSL
sasl.enabled.mechanisms={",".join(self.mechanisms)}
sasl.mechanism.inter.broker.protocol=PLAIN
listener.name.sasl_ssl.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required \
username="{ADMIN_USER}" password="{ADMIN_PASSWORD}" {plain_users};
listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
ssl.keystore.type=PEM
ssl.keystore.location={self.pki.keystore}
ssl.truststore.type=PEM
ssl.truststore.location={self.pki.ca}
ssl.client.auth=none
log.dirs={self.dir / "data"}
num.partitions=1
auto.create.topics.enable=false
offsets.topic.replication.factor=1
offsets.topic.num.partitions=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
"""
        )

    def start(self, timeout: float = 60.0) -> None:
        self._write_config()
        cluster_id = subprocess.run(
            self._java("kafka.tools.StorageTool", "random-uuid"), capture_output=True, text=True, timeout=60, check=True
        ).stdout.strip()
        # KRaft keeps SCRAM credentials in the metadata log: they are added when the storage is formatted.
        fmt = subprocess.run(
            self._java(
                "kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", str(self.config),
                "--add-scram", f"SCRAM-SHA-256=[name={APP_USER},password={APP_PASSWORD}]",
            ),
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        if fmt.returncode != 0:
            raise RuntimeError(f"kafka storage format failed:\n{fmt.stdout}\n{fmt.stderr}")
        with self.stdout_log.open("wb") as out:
            self.proc = subprocess.Popen(
                self._java("kafka.Kafka", str(self.config)),
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        try:
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise

    def client_config(
        self, *, mechanism: str = "PLAIN", username: str = APP_USER, password: str = APP_PASSWORD
    ) -> dict[str, Any]:
        """kafka-python options for a client of this broker over SASL_SSL, trusting the test CA."""
        return {
            "bootstrap_servers": self.bootstrap,
            "security_protocol": "SASL_SSL",
            "sasl_mechanism": mechanism,
            "sasl_plain_username": username,
            "sasl_plain_password": password,
            "ssl_cafile": str(self.pki.ca),
        }

    def _wait_ready(self, timeout: float) -> None:
        """Until the broker answers a metadata request over SASL_SSL; fails loudly with the broker log tail."""
        from kafka import KafkaAdminClient
        from kafka.errors import KafkaError

        assert self.proc is not None
        deadline = time.monotonic() + timeout
        last: BaseException | None = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"secure kafka exited with {self.proc.returncode}\n{self.logs()}")
            try:
                admin = KafkaAdminClient(
                    **self.client_config(username=ADMIN_USER, password=ADMIN_PASSWORD),
                    request_timeout_ms=3000,
                    bootstrap_timeout_ms=3000,
                )
                try:
                    admin.describe_cluster()
                    return
                finally:
                    admin.close()
            except (KafkaError, OSError) as exc:
                last = exc
                time.sleep(0.5)
        raise RuntimeError(
            f"secure kafka did not answer on {self.bootstrap} within {timeout:.0f} s ({last!r})\n{self.logs()}"
        )

    def logs(self, lines: int = 40) -> str:
        """The broker's errors (a failed start ends in pages of shutdown noise), then the tails of its logs."""
        try:
            text = self.server_log.read_text(errors="replace").splitlines()
        except OSError:
            text = []
        errors = [line for line in text if " ERROR " in line or " FATAL " in line or line.startswith("Caused by:")]
        return (
            f"----- errors in {self.server_log} -----\n" + "\n".join(errors[:20]) + "\n"
            f"----- tail of {self.server_log} -----\n{_tail(self.server_log, lines)}\n"
            f"----- tail of {self.stdout_log} -----\n{_tail(self.stdout_log, 20)}"
        )

    def stop(self, timeout: float = 30.0) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
