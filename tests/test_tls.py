"""
TLS: the service CA and its certificates, a real agent on an C{ssl:}
endpoint called by the RPC client (verified by the CA and the node's name,
mutual TLS), and a real manager with C{tls = on} on the LOCAL driver.
"""

from __future__ import annotations

import base64
import datetime
import glob
import io
import ipaddress
import os
import stat
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID
from twisted.internet import reactor as _reactor
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase, TestCase

from conpaassql.agent.config import AgentConfig
from conpaassql.agent.tap import AgentService
from conpaassql.agent.tap import Options as AgentOptions
from conpaassql.client import cli
from conpaassql.common.procfs import process_argv
from conpaassql.common.tls import (
    CONTEXT_CA_CERT,
    CONTEXT_CERT,
    CONTEXT_KEY,
    ClientTLS,
    ServerTLS,
    ServiceCA,
    ServiceTLS,
    TLSFileError,
    contextFiles,
    plainOffLocalhost,
    readCredential,
)
from conpaassql.iaas.onesim import VMBooter
from conpaassql.manager.config import ConfigError, ManagerConfig, parse_config
from conpaassql.manager.tap import ManagerService, checkListens
from conpaassql.rpc.client import RPCClient
from conpaassql.rpc.errors import TransportError
from tests.support.mariadb import skip_unless_mariadb
from tests.test_iaas_local import _processesMentioning, localCloud
from tests.support.managerproc import WAIT, nodesIn, until

reactor: Any = _reactor

NODE = "conpaassql-abcd-node-1"


def _mode(path: str) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


class CertificateTests(SynchronousTestCase):
    def test_ca(self) -> None:
        """The CA: EC P-256, CA:TRUE (critical), may sign certificates, ten years."""
        directory = self.mktemp()
        os.makedirs(directory)
        ca = ServiceCA.loadOrCreate(directory, "test CA")
        self.assertEqual(_mode(os.path.join(directory, "ca.key")), 0o600)
        cert = x509.load_pem_x509_certificate(ca.certificate)
        with open(os.path.join(directory, "ca.pem"), "rb") as f:
            self.assertEqual(f.read(), ca.certificate)
        basic = cert.extensions.get_extension_for_class(x509.BasicConstraints)
        self.assertTrue(basic.critical)
        self.assertTrue(basic.value.ca)
        usage_ = cert.extensions.get_extension_for_class(x509.KeyUsage).value
        self.assertTrue(usage_.key_cert_sign)
        self.assertTrue(usage_.crl_sign)
        self.assertIsInstance(cert.public_key(), ec.EllipticCurvePublicKey)
        life = cert.not_valid_after_utc - cert.not_valid_before_utc
        self.assertGreater(life, datetime.timedelta(days=3649))
        self.assertLess(life, datetime.timedelta(days=3652))
        # Made once: the next start reads the same CA.
        again = ServiceCA.loadOrCreate(directory, "test CA")
        self.assertEqual(again.certificate, ca.certificate)
        self.assertNotIn(b"PRIVATE", ca.certificate)
        self.assertNotIn("PRIVATE", repr(ca))

    def test_ca_files_checked(self) -> None:
        """A missing half, a key readable by others, or a foreign key is refused."""
        directory = self.mktemp()
        os.makedirs(directory)
        ServiceCA.loadOrCreate(directory, "test CA")
        keyPath = os.path.join(directory, "ca.key")
        os.chmod(keyPath, 0o644)
        e = self.assertRaises(TLSFileError, ServiceCA.loadOrCreate, directory, "test CA")
        self.assertIn("0600", str(e))
        other = self.mktemp()
        os.makedirs(other)
        ServiceCA.loadOrCreate(other, "other CA")
        os.replace(os.path.join(other, "ca.key"), keyPath)
        e = self.assertRaises(TLSFileError, ServiceCA.loadOrCreate, directory, "test CA")
        self.assertIn("is not the key of", str(e))
        os.unlink(keyPath)
        e = self.assertRaises(TLSFileError, ServiceCA.loadOrCreate, directory, "test CA")
        self.assertIn("ca.key is missing", str(e))

    def test_leaf(self) -> None:
        """A leaf: not a CA, SAN names and addresses, server and client auth, ~2 years."""
        ca = ServiceCA.create("test CA")
        cred = ca.issue(NODE, [NODE, "10.0.0.7", "::1", NODE])
        self.assertNotIn("PRIVATE", repr(cred))
        cert = x509.load_pem_x509_certificate(cred.certificate)
        caCert = x509.load_pem_x509_certificate(ca.certificate)
        self.assertEqual(cert.issuer, caCert.subject)
        cert.verify_directly_issued_by(caCert)
        self.assertFalse(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
        self.assertFalse(cert.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign)
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        self.assertEqual(sans.get_values_for_type(x509.DNSName), [NODE])
        self.assertEqual(sans.get_values_for_type(x509.IPAddress),
                         [ipaddress.ip_address("10.0.0.7"), ipaddress.ip_address("::1")])
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        self.assertEqual(set(eku), {ExtendedKeyUsageOID.SERVER_AUTH,
                                    ExtendedKeyUsageOID.CLIENT_AUTH})
        life = cert.not_valid_after_utc - cert.not_valid_before_utc
        self.assertGreater(life, datetime.timedelta(days=365))
        self.assertLess(life, datetime.timedelta(days=732))

    def test_context_round_trip(self) -> None:
        """The node context carries the three PEM texts as one-line base64."""
        ca = ServiceCA.create("test CA")
        context = ServiceTLS(ca, ca.issue("m", ["localhost"])).nodeContext(NODE)
        for value in context.values():
            self.assertNotIn("\n", value)
        files = contextFiles(context)
        assert files is not None
        self.assertEqual(files["ca"], ca.certificate)
        self.assertIn(b"PRIVATE KEY", files["key"])
        cert = x509.load_pem_x509_certificate(files["cert"])
        self.assertEqual(cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
                         .value.get_values_for_type(x509.DNSName), [NODE])
        self.assertIsNone(contextFiles({"AGENT_TOKEN": "x"}))
        self.assertRaises(ValueError, contextFiles, {CONTEXT_CERT: context[CONTEXT_CERT]})
        self.assertRaises(ValueError, contextFiles, {CONTEXT_CERT: "!", CONTEXT_KEY: "!",
                                                      CONTEXT_CA_CERT: "!"})

    def test_credential_files(self) -> None:
        """A key file must be 0600 and match its certificate."""
        ca = ServiceCA.create("test CA")
        cred = ca.issue(NODE, [NODE])
        directory = self.mktemp()
        os.makedirs(directory)
        cert, key = os.path.join(directory, "c.pem"), os.path.join(directory, "k.pem")
        with open(cert, "wb") as f:
            f.write(cred.certificate)
        with open(key, "wb") as f:
            f.write(cred.key)
        os.chmod(key, 0o640)
        self.assertRaises(TLSFileError, readCredential, cert, key)
        os.chmod(key, 0o600)
        self.assertEqual(readCredential(cert, key), cred)
        with open(key, "wb") as f:
            f.write(ca.issue("x", ["x"]).key)
        self.assertRaises(TLSFileError, readCredential, cert, key)


class OptionTests(SynchronousTestCase):
    def writeNode(self) -> tuple[str, str, str]:
        ca = ServiceCA.create("test CA")
        cred = ca.issue(NODE, [NODE])
        directory = self.mktemp()
        os.makedirs(directory)
        paths = []
        for name, data in (("c.pem", cred.certificate), ("k.pem", cred.key),
                           ("ca.pem", ca.certificate)):
            paths.append(os.path.join(directory, name))
            with open(paths[-1], "wb") as f:
                f.write(data)
            os.chmod(paths[-1], 0o600)
        return paths[0], paths[1], paths[2]

    def test_agent_options(self) -> None:
        cert, key, ca = self.writeNode()
        state = self.mktemp()
        o = AgentOptions()
        o.parseOptions(["--state-dir", state, "--listen", "ssl:0:interface=127.0.0.1",
                        "--listen", "tcp:0:interface=127.0.0.1", "--tls-cert", cert,
                        "--tls-key", key, "--ca-cert", ca])
        self.assertEqual(o["listen"], "ssl:0:interface=127.0.0.1")
        self.assertEqual(o["also-listen"], ["tcp:0:interface=127.0.0.1"])
        self.assertIsNotNone(o["tls"].clientCA)
        for argv, message in [
            (["--listen", "ssl:0"], "needs --tls-cert"),
            (["--listen", "ssl:0", "--tls-cert", cert], "go together"),
            (["--listen", "ssl:0", "--listen", "tcp:0", "--tls-cert", cert, "--tls-key", key],
             "loopback"),
        ]:
            e = self.assertRaises(usage.UsageError, AgentOptions().parseOptions,
                                  ["--state-dir", state, *argv])
            self.assertIn(message, str(e))
        os.chmod(key, 0o644)
        e = self.assertRaises(usage.UsageError, AgentOptions().parseOptions,
                              ["--state-dir", state, "--listen", "ssl:0", "--tls-cert", cert,
                               "--tls-key", key])
        self.assertIn("0600", str(e))

    def test_manager_config(self) -> None:
        self.assertFalse(parse_config("").useTLS)
        self.assertFalse(parse_config("[iaas]\nDRIVER = LIBCLOUD\n").useTLS)
        self.assertTrue(parse_config("[manager]\ntls = on\n").useTLS)
        self.assertTrue(parse_config("[iaas]\nDRIVER = LIBCLOUD\n[manager]\ntls = auto\n")
                        .useTLS)
        self.assertFalse(parse_config("[manager]\ntls = auto\n").useTLS)
        self.assertEqual(parse_config("[manager]\ntls_names = a.example.org, 10.0.0.5\n")
                         .tls_names, ("a.example.org", "10.0.0.5"))
        self.assertIn("must be on, off or auto",
                      str(self.assertRaises(ConfigError, parse_config, "[manager]\ntls = maybe\n")))
        on, off = ManagerConfig(tls="on"), ManagerConfig(tls="off")
        checkListens(on, ["ssl:50000", "tcp:50001:interface=127.0.0.1"])
        self.assertRaises(usage.UsageError, checkListens, on, ["tcp:50000"])
        self.assertRaises(usage.UsageError, checkListens, off, ["ssl:50000"])
        self.assertTrue(plainOffLocalhost("tcp6:1:interface=\\:\\:"))
        self.assertFalse(plainOffLocalhost("tcp6:1:interface=\\:\\:1"))


class AgentOverTLSTests(TestCase):
    """A real agent on ssl:, with the service CA's certificates."""

    skip = skip_unless_mariadb()
    timeout = 300

    async def startAgent(self) -> tuple[str, str]:
        self.ca = ServiceCA.create("test CA")
        self.manager = self.ca.issue("conpaassql manager", ["localhost"])
        stateDir = os.path.abspath(self.mktemp())
        tokenFile = os.path.join(stateDir, "api-token")
        service = AgentService(
            stateDir, AgentConfig(), "ssl:0:interface=127.0.0.1", tokenFile, reactor=reactor,
            stopProcess=lambda: None,
            tls=ServerTLS(self.ca.issue(NODE, [NODE]), clientCA=self.ca.certificate),
        )
        service.startService()
        self.addCleanup(lambda: service.stopService() if service.running else None)
        port = await service.listening
        with open(tokenFile) as f:
            token = f.read().strip()
        with open(os.path.join(stateDir, "agent-url")) as f:
            self.assertEqual(f.read().strip(), f"https://127.0.0.1:{port.getHost().port}/")
        return f"https://127.0.0.1:{port.getHost().port}/", token

    async def callWith(self, url: str, token: str, tls: Any) -> Any:
        client = RPCClient(url, token, reactor=reactor, timeout=30, tls=tls)
        try:
            return await client.call("get_server_state")
        finally:
            await client.close()

    async def test_verified_both_ways(self) -> None:
        url, token = await self.startAgent()
        result = await self.callWith(url, token, ClientTLS(
            self.ca.certificate, hostname=NODE, clientCertificate=self.manager))
        self.assertIn("state", result["return"])

    async def test_refused(self) -> None:
        """Wrong CA, wrong name, no client certificate, a foreign one, plain http."""
        url, token = await self.startAgent()
        other = ServiceCA.create("another CA")
        cases = {
            "wrong CA": ClientTLS(other.certificate, hostname=NODE,
                                  clientCertificate=self.manager),
            "name mismatch": ClientTLS(self.ca.certificate, hostname="conpaassql-abcd-node-2",
                                       clientCertificate=self.manager),
            "no client certificate": ClientTLS(self.ca.certificate, hostname=NODE),
            "foreign client certificate": ClientTLS(
                self.ca.certificate, hostname=NODE,
                clientCertificate=other.issue("conpaassql manager", ["localhost"])),
        }
        for what, tls in cases.items():
            e = await self.assertFailure(
                _deferred(self.callWith(url, token, tls)),
                TransportError)
            self.assertIn(url, str(e), what)
            if what in ("wrong CA", "name mismatch"):
                self.assertIn("TLS with", str(e))
        e = await self.assertFailure(
            _deferred(self.callWith(url.replace("https", "http"), token, None)), TransportError)
        self.assertIn("get_server_state", str(e))

    def test_http_url_with_tls_refused(self) -> None:
        ca = ServiceCA.create("test CA")
        self.assertRaises(ValueError, RPCClient, "http://127.0.0.1:1/", "t",
                          tls=ClientTLS(ca.certificate))


async def _oneRunningNode(case: TestCase, client: RPCClient,
                          service: ManagerService) -> tuple[dict[str, Any], Any]:
    """Add a node and wait until it is RUNNING; its info and the manager."""
    await client.call("add_nodes", {"function": "agent"})
    await until(lambda: nodesIn(client, "RUNNING", [1]), "a RUNNING node")
    info = (await client.call("get_node_info", {"serviceNodeId": 1}))["serviceNode"]
    case.assertTrue(info["isRunningMySQL"])
    assert service.manager is not None
    return info, service.manager


def _deferred(coro: Any) -> Any:
    from twisted.internet.defer import Deferred

    return Deferred.fromCoroutine(coro)


class ManagerTLSTests(TestCase):
    """A real manager with tls = on on the LOCAL driver."""

    skip = skip_unless_mariadb()
    timeout = 600

    async def test_node_over_tls(self) -> None:
        cloud = localCloud(self)
        logs: list[str] = []
        from twisted.logger import formatEvent, globalLogPublisher

        def observe(event: Any) -> None:
            logs.append(formatEvent(event))

        globalLogPublisher.addObserver(observe)  # type: ignore[arg-type]
        self.addCleanup(globalLogPublisher.removeObserver, observe)  # type: ignore[arg-type]
        service = ManagerService(
            cloud.stateDir, ManagerConfig(poll_interval=0.25, boot_timeout=WAIT, tls="on"),
            "ssl:0:interface=127.0.0.1", os.path.join(cloud.stateDir, "api-token"),
            reactor=reactor, stopProcess=lambda: None,
            alsoListen=["tcp:0:interface=127.0.0.1"],
        )
        service.startService()
        self.addCleanup(lambda: service.stopService() if service.running else None)
        port = await service.listening
        self.assertEqual(_mode(os.path.join(cloud.stateDir, "ca.key")), 0o600)
        with open(os.path.join(cloud.stateDir, "ca.pem"), "rb") as caFile:
            caPEM = caFile.read()
        with open(os.path.join(cloud.stateDir, "api-token")) as tokenFile:
            token = tokenFile.read().strip()
        # The API over TLS, verified by the service CA; and plain on loopback.
        client = RPCClient(f"https://127.0.0.1:{port.getHost().port}/", token, reactor=reactor,
                           timeout=60, tls=ClientTLS(caPEM))
        self.addCleanup(client.close)
        plain = RPCClient(f"http://127.0.0.1:{service.otherPorts[0].getHost().port}/", token,
                          reactor=reactor, timeout=60)
        self.addCleanup(plain.close)
        self.assertEqual((await plain.call("list_nodes")), {"serviceNode": []})
        # The web front-end mounted in the manager calls the API over TLS too.
        assert service._guiClients is not None
        self.assertTrue(service._guiClients.url.startswith("https://127.0.0.1:"))
        self.assertEqual(await service._guiClients.forToken(token).call("list_nodes"),
                         {"serviceNode": []})
        # The command-line client verifies it with --ca-cert (and refuses it without).
        httpsUrl = f"https://127.0.0.1:{port.getHost().port}/"
        tokenPath = os.path.join(cloud.stateDir, "api-token")
        caPath = os.path.join(cloud.stateDir, "ca.pem")
        out, err = io.StringIO(), io.StringIO()
        self.assertEqual(await cli.run(["--url", httpsUrl, "--token-file", tokenPath,
                                        "--ca-cert", caPath, "list_nodes"], out, err,
                                       environ={}), 0, err.getvalue())
        out, err = io.StringIO(), io.StringIO()
        self.assertEqual(await cli.run(["--url", httpsUrl, "--token-file", tokenPath,
                                        "list_nodes"], out, err, environ={}),
                         cli.EXIT_TRANSPORT)
        self.assertIn("TLS with", err.getvalue())

        info, manager = await _oneRunningNode(self, client, service)
        node = manager.nodes[1]
        url = f"https://127.0.0.1:{info['port']}/"
        self.assertEqual(manager._address(node), url)
        nodeDir = os.path.join(cloud.baseDir, info["name"])
        with open(os.path.join(nodeDir, "agent", "agent-url")) as f:
            self.assertEqual(f.read().strip(), url)
        for name in ("tls-cert.pem", "tls-key.pem", "ca.pem"):
            self.assertEqual(_mode(os.path.join(nodeDir, name)), 0o600)

        # The agent refuses plain http, and a client without the manager's certificate.
        e = await self.assertFailure(_deferred(RPCClient(
            url.replace("https", "http"), node.core.record.token, reactor=reactor, timeout=30,
            persistent=False).call("get_server_state")), TransportError)
        self.assertIn("get_server_state", str(e))
        e = await self.assertFailure(_deferred(RPCClient(
            url, node.core.record.token, reactor=reactor, timeout=30, persistent=False,
            tls=ClientTLS(caPEM, hostname=info["name"])).call("get_server_state")),
            TransportError)

        # A user call goes through the manager to the agent over TLS.
        result = await client.call("configure_user", {
            "serviceNodeId": 1, "username": "app", "password": "s3cret pw"})
        self.assertEqual(result, {"1": "OK"})

        # No key material in the logs, the node's files or any process's arguments.
        with open(os.path.join(nodeDir, "tls-key.pem"), "rb") as keyFile:
            nodeKey = keyFile.read()
        with open(os.path.join(cloud.stateDir, "ca.key"), "rb") as keyFile:
            caKey = keyFile.read()
        assert service.tls is not None
        secrets = [_body(nodeKey), _body(caKey), _body(service.tls.credential.key)]
        texts = ["\n".join(logs)]
        for path in glob.glob(os.path.join(nodeDir, "**", "*.log"), recursive=True):
            with open(path, errors="replace") as log:
                texts.append(log.read())
        for pid in _processesMentioning(nodeDir + os.sep):
            texts.append(" ".join(process_argv(pid)))
        for text in texts:
            for secret in secrets:
                self.assertNotIn(secret, text)
                self.assertNotIn(base64.b64encode(secret.encode()).decode()[:40], text)
        self.assertNotIn("PRIVATE KEY", "\n".join(texts))

        await client.call("remove_nodes", {"serviceNodeId": 1})
        await until(lambda: 1 not in manager.nodes, "node 1 TERMINATED")


def _body(pem: bytes) -> str:
    """The first line of a PEM key's base64 body (what would show if it leaked)."""
    return pem.decode().splitlines()[1]


class BootScriptTLSTests(TestCase):
    """
    SLOW (a real agent and mariadbd): a VM booted by the OpenNebula simulator
    from etc/agent-boot.sh.in with the TLS context keys listens on https,
    verified by the CA and its name, and requires a client certificate.
    """

    skip = skip_unless_mariadb()
    timeout = 240

    async def test_booted_agent_on_tls(self) -> None:
        from tests.support.onesim import free_port, make_driver, start_simulator
        from tests.test_iaas_opennebula import TAG, context, waitFor

        sim, svc = await start_simulator(self, boot=True)
        driver = make_driver(self, svc.url, TAG)
        ca = ServiceCA.create("test CA")
        tls = ServiceTLS(ca, ca.issue("conpaassql manager", ["localhost"]))
        name = f"conpaassql-{TAG}-node-1"
        port = free_port()
        from conpaassql.iaas.base import NodeSpec

        spec = NodeSpec(1, name, {**context(1, port=port, token="tok-tls"),
                                  **tls.nodeContext(name)})
        info = await driver.create(spec)
        booter = sim.booter
        assert isinstance(booter, VMBooter)
        vmDir = booter.vmDir(int(info.vmId))
        self.addCleanup(lambda: _deferred(driver.terminate(info.vmId)))

        async def address() -> bool:
            vm = next((v for v in await driver.list() if v.vmId == info.vmId), None)
            return vm is not None and vm.state == "RUNNING" and bool(vm.ip)

        await waitFor(address, "RUNNING")
        vm = next(v for v in await driver.list() if v.vmId == info.vmId)
        url = f"https://{vm.ip}:{port}/"
        await _bootedAgentAnswers(url, tls.agentPolicy(name), vmDir)
        confDir = os.path.join(vmDir, "root", "etc", "conpaassql")
        for fileName in ("agent-tls.pem", "agent-tls.key", "ca.pem"):
            self.assertEqual(_mode(os.path.join(confDir, fileName)), 0o600)
        with open(os.path.join(confDir, "node.conf")) as conf:
            self.assertIn(f"AGENT_URL=https://{vm.ip}:{port}/", conf.read())
        # Without a client certificate, or over plain http: refused.
        for bad in (RPCClient(url, "tok-tls", persistent=False, timeout=10,
                              tls=ClientTLS(ca.certificate, hostname=name)),
                    RPCClient(url.replace("https", "http"), "tok-tls", persistent=False,
                              timeout=10)):
            await self.assertFailure(_deferred(bad.call("get_server_state")), TransportError)
        # The key is on no command line.
        with open(os.path.join(confDir, "agent-tls.key"), "rb") as f:
            body = _body(f.read())
        pids = _processesMentioning(vmDir)
        self.assertTrue(pids)
        for pid in pids:
            self.assertNotIn(body, " ".join(process_argv(pid)))
        await driver.terminate(info.vmId)
        await waitFor(lambda: _deferred(_false()) if booter.running else _deferred(_true()),
                      "the VM's processes to end", timeout=60)


async def _bootedAgentAnswers(url: str, policy: ClientTLS, vmDir: str) -> None:
    """Wait until a booted VM's agent answers over TLS (the boot log if it never does)."""
    from tests.test_iaas_opennebula import waitFor

    client = RPCClient(url, "tok-tls", persistent=False, timeout=10, tls=policy)

    async def answers() -> bool:
        try:
            await client.call("get_server_state")
        except TransportError:
            return False
        return True

    try:
        await waitFor(answers, "the agent over TLS", timeout=150)
    except AssertionError:
        with open(os.path.join(vmDir, "boot.log"), errors="replace") as bootLog:
            raise AssertionError(bootLog.read()[-3000:]) from None


async def _true() -> bool:
    return True


async def _false() -> bool:
    return False


class ReplicationSeedTLSTests(TestCase):
    """
    A slave agent pulls the master agent's snapshot over mutual TLS: both
    verified by the service CA; a master of another CA is refused.
    """

    skip = skip_unless_mariadb()
    timeout = 600

    async def startTLSAgent(self, ca: ServiceCA, name: str,
                            manager: Any) -> Any:
        from tests.support.agent import RunningAgent

        stateDir = os.path.abspath(self.mktemp())
        tokenFile = os.path.join(stateDir, "api-token")
        service = AgentService(
            stateDir, AgentConfig(), "ssl:0:interface=127.0.0.1", tokenFile, reactor=reactor,
            stopProcess=lambda: None,
            tls=ServerTLS(ca.issue(name, [name]), clientCA=ca.certificate),
        )
        service.startService()
        self.addCleanup(lambda: service.stopService() if service.running else None)
        port = await service.listening
        with open(tokenFile) as f:
            token = f.read().strip()
        url = f"https://127.0.0.1:{port.getHost().port}/"
        agent = RunningAgent(service, url, token)
        await agent.client.close()
        agent.client = RPCClient(url, token, reactor=reactor, timeout=60, tls=ClientTLS(
            ca.certificate, hostname=name, clientCertificate=manager))
        self.addCleanup(agent.close)
        await agent.waitFor("RUNNING")
        return agent

    async def test_seed_over_tls(self) -> None:
        from tests.test_agent_replication import PASSWORD, loadShop, seedParams, waitSeeded

        ca = ServiceCA.create("test CA")
        manager = ca.issue("conpaassql manager", ["localhost"])
        master = await self.startTLSAgent(ca, "conpaassql-abcd-node-1", manager)
        await master.call("set_up_replica_master", {"server_id": 1,
                                                    "repl_password": PASSWORD})
        await loadShop(master)
        slave = await self.startTLSAgent(ca, "conpaassql-abcd-node-2", manager)
        self.assertTrue(master.url.startswith("https://"))
        await slave.call("set_up_replica_slave", seedParams(master, 2))
        state = await waitSeeded(slave)
        self.assertNotIn("error", state)
        self.assertEqual(state["role"], "slave")
        self.assertEqual(state["last_setup"]["phase"], "replicating")

        # A node of another service (another CA) cannot seed from this master,
        # nor is this master trusted by it.
        other = ServiceCA.create("another CA")
        stranger = await self.startTLSAgent(
            other, "conpaassql-abcd-node-3", other.issue("conpaassql manager", ["localhost"]))
        await stranger.call("set_up_replica_slave", seedParams(master, 3))
        state = await waitSeeded(stranger)
        self.assertEqual(state["phase"], "failed")
        self.assertIn("cannot reach the master agent", state["error"])
        self.assertIn("certificate verify failed", state["error"])
        self.assertIsNone(state["role"])


class ManagerOpenNebulaTLSTests(TestCase):
    """
    SLOW: a real manager with tls = on on the OpenNebula driver against the
    simulator, which boots each VM from etc/agent-boot.sh.in: the node runs
    with the manager calling its agent over mutual TLS.
    """

    skip = skip_unless_mariadb()
    timeout = 400

    async def test_node_over_tls(self) -> None:
        from tests.support.onesim import PASSWORD, USER, free_port, start_simulator

        sim, svc = await start_simulator(self, boot=True)
        text = (
            "[iaas]\nDRIVER = OPENNEBULA_XMLRPC\n"
            f"OPENNEBULA_URL = {svc.url}\nOPENNEBULA_USER = {USER}\n"
            f"OPENNEBULA_PASSWORD = {PASSWORD}\nOPENNEBULA_IMAGE_ID = 3\n"
            "OPENNEBULA_NETWORK_ID = 0\nOPENNEBULA_CPU = 0.5\nOPENNEBULA_MEMORY = 512\n"
            "[manager]\ntls = on\npoll_interval = 0.2\nprobe_timeout = 3\n"
            f"boot_timeout = {WAIT:g}\nagent_port = {free_port()}\n"
        )
        stateDir = os.path.abspath(self.mktemp())
        service = ManagerService(
            stateDir, parse_config(text), "ssl:0:interface=127.0.0.1",
            os.path.join(stateDir, "api-token"), reactor=reactor, stopProcess=lambda: None,
        )
        service.startService()
        self.addCleanup(lambda: service.stopService() if service.running else None)
        port = await service.listening
        with open(os.path.join(stateDir, "api-token")) as f:
            token = f.read().strip()
        with open(os.path.join(stateDir, "ca.pem"), "rb") as caFile:
            caPEM = caFile.read()
        client = RPCClient(f"https://127.0.0.1:{port.getHost().port}/", token, reactor=reactor,
                           timeout=60, tls=ClientTLS(caPEM))
        self.addCleanup(client.close)

        async def removeAll() -> None:
            if service.running and service.manager and service.manager.nodes:
                await client.call("remove_nodes", {"serviceNodeId": 1})
                await until(lambda: not service.manager or not service.manager.nodes,
                            "the node TERMINATED")

        self.addCleanup(lambda: _deferred(removeAll()))
        info, manager = await _oneRunningNode(self, client, service)
        record = manager.nodes[1].core.record
        url = f"https://{info['ip']}:{info['port']}/"
        self.assertEqual(manager._address(manager.nodes[1]), url)
        # Over plain http, the agent answers nothing.
        await self.assertFailure(_deferred(RPCClient(
            url.replace("https", "http"), record.token, reactor=reactor, timeout=10,
            persistent=False).call("get_server_state")), TransportError)
        assert isinstance(sim.booter, VMBooter)
        confDir = os.path.join(sim.booter.vmDir(int(info["vm_id"])), "root", "etc", "conpaassql")
        self.assertEqual(_mode(os.path.join(confDir, "agent-tls.key")), 0o600)
        await removeAll()


class LibcloudUserDataTLSTests(TestCase):
    """
    SLOW: the libcloud driver's user data (the boot script with the node's
    context, TLS keys included, exported at its top), run as cloud-init would
    (by the simulator's booter, on a loopback address): the agent listens on
    https with the node's certificate and requires the manager's.
    """

    skip = skip_unless_mariadb()
    timeout = 240

    async def test_user_data_boots_agent_on_tls(self) -> None:
        import random
        from types import SimpleNamespace

        from conpaassql.iaas.base import NodeSpec
        from conpaassql.iaas.libcloud import makeDriver
        from tests.support.onesim import free_port
        from tests.test_iaas_libcloud import TAG, NamingDummyNodeDriver, settings

        driver = makeDriver(settings(), stateDir=self.mktemp(), reactor=reactor, serviceTag=TAG)
        self.addCleanup(driver.close)
        ca = ServiceCA.create("test CA")
        tls = ServiceTLS(ca, ca.issue("conpaassql manager", ["localhost"]))
        name = f"conpaassql-{TAG}-node-1"
        port = free_port()
        info = await driver.create(NodeSpec(1, name, {
            "MANAGER_URL": "https://127.0.0.1:50000/", "NODE_ID": "1",
            "AGENT_TOKEN": "tok-tls", "AGENT_PORT": str(port), "SERVICE_TAG": TAG,
            **tls.nodeContext(name)}))
        userData = NamingDummyNodeDriver.userData[info.vmId]
        assert userData is not None
        ip = f"127.{random.randint(100, 250)}.{random.randint(1, 250)}.1"
        booter = VMBooter(self.mktemp(), reactor=reactor)
        self.addCleanup(booter.stopAll)
        booter.boot(SimpleNamespace(id=1, ip=ip, context={  # type: ignore[arg-type]
            "START_SCRIPT_BASE64": base64.b64encode(userData.encode()).decode(),
            "ETH0_IP": ip}))
        url = f"https://{ip}:{port}/"
        await _bootedAgentAnswers(url, tls.agentPolicy(name), booter.vmDir(1))
        await self.assertFailure(_deferred(RPCClient(
            url, "tok-tls", persistent=False, timeout=10,
            tls=ClientTLS(ca.certificate, hostname=name)).call("get_server_state")),
            TransportError)


class ManagerReplicationTLSTests(TestCase):
    """
    A real manager with tls = on (LOCAL driver): the master and a seeded
    slave; the slave's agent pulls the master's snapshot over mutual TLS.
    """

    skip = skip_unless_mariadb()
    timeout = 600

    async def test_seeded_slave(self) -> None:
        cloud = localCloud(self)
        service = ManagerService(
            cloud.stateDir, ManagerConfig(poll_interval=0.25, boot_timeout=WAIT, tls="on"),
            "tcp:0:interface=127.0.0.1", os.path.join(cloud.stateDir, "api-token"),
            reactor=reactor, stopProcess=lambda: None,
        )
        service.startService()
        self.addCleanup(lambda: service.stopService() if service.running else None)
        port = await service.listening
        with open(os.path.join(cloud.stateDir, "api-token")) as f:
            token = f.read().strip()
        client = RPCClient(f"http://127.0.0.1:{port.getHost().port}/", token, reactor=reactor,
                           timeout=60)
        self.addCleanup(client.close)
        await client.call("add_nodes", {"function": "agent", "count": 2})
        await until(lambda: nodesIn(client, "RUNNING", [1, 2]), "two RUNNING nodes")
        await client.call("set_up_replica_master", {"id": 1})
        await client.call("configure_user", {"serviceNodeId": 1, "username": "app",
                                             "password": "s3cret pw"})
        seeding = await client.call("set_up_replica_slave", {"id": 2})
        self.assertEqual(seeding["state"], "SEEDING")

        async def slave() -> bool:
            info = (await client.call("get_node_info", {"serviceNodeId": 2}))["serviceNode"]
            setup = info.get("replication", {}).get("setup", {})
            if setup.get("error"):
                raise AssertionError(f"node 2: {info}")
            return bool(info["role"] == "SLAVE" and setup.get("phase") == "replicating")

        await until(slave, "node 2 a seeded SLAVE")
        users = (await client.call("get_users", {"serviceNodeId": 2}))["2"]
        self.assertIn("app", [u["username"] for u in users])
        manager = service.manager
        assert manager is not None
        self.assertTrue(all(manager._address(n).startswith("https://")  # type: ignore[union-attr]
                            for n in manager.nodes.values()))
        for nodeId in (2, 1):
            await client.call("remove_nodes", {"serviceNodeId": nodeId})
            await until(lambda nodeId=nodeId: nodeId not in manager.nodes,
                        f"node {nodeId} TERMINATED")


class TLSSecretsTests(TestCase):
    """
    A real C{twistd conpaassql-manager} with tls = on (LOCAL driver): the
    service CA's key and the node's key are in 0600 files only, in no
    process's arguments or environment and in no log.
    """

    skip = skip_unless_mariadb()
    timeout = 600

    async def test_keys_stay_in_their_files(self) -> None:
        from tests.test_secrets import _children, _readProc, startTwistdManager

        cloud, protocol, client = await startTwistdManager(self, "tls = on\n")
        stateDir = cloud.stateDir
        await client.call("add_nodes", {"function": "agent"})
        await until(lambda: nodesIn(client, "RUNNING", [1]), "node 1 RUNNING")
        info = (await client.call("get_node_info", {"serviceNodeId": 1}))["serviceNode"]
        nodeDir = os.path.join(cloud.baseDir, info["name"])
        with open(os.path.join(nodeDir, "agent", "agent-url")) as urlFile:
            self.assertTrue(urlFile.read().startswith("https://"))
        keys = {}
        for what, path in (("CA key", os.path.join(stateDir, "ca.key")),
                           ("node key", os.path.join(nodeDir, "tls-key.pem"))):
            with open(path, "rb") as keyFile:
                keys[what] = _body(keyFile.read()).encode()
        pids = _children(protocol.pid) | set(_processesMentioning(stateDir + os.sep))
        self.assertGreaterEqual(len(pids), 3, pids)
        for pid in pids:
            for where in ("cmdline", "environ"):
                text = _readProc(pid, where)
                for what, key in keys.items():
                    self.assertNotIn(key, text, f"{what} in /proc/{pid}/{where}")
        for directory, _, files in os.walk(stateDir):
            for name in files:
                path = os.path.join(directory, name)
                if os.path.islink(path) or not os.path.isfile(path):
                    continue
                with open(path, "rb") as data:
                    content = data.read()
                for what, key in keys.items():
                    if key in content:
                        self.assertEqual(_mode(path), 0o600, f"{what} in {path}")
                        self.assertNotIn(".log", name, f"{what} in {path}")
        await client.call("shutdown")
        await until(lambda: protocol.ended.called, "the manager process to exit")
        for what, key in keys.items():
            self.assertNotIn(key, bytes(protocol.output), f"{what} in the twistd log")
