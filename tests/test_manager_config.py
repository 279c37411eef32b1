"""
The manager's configuration file and its twistd options.
"""

from __future__ import annotations

import io
import os
import socket
import sys
from types import MappingProxyType

from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from conpaassql.common.config import ConfigError
from conpaassql.manager import drivers
from conpaassql.manager.config import ManagerConfig, load_config, parse_config
from conpaassql.manager.tap import (
    DEFAULT_LISTEN,
    ManagerService,
    Options,
    makeService,
    nodeFacingUrl,
)


class ConfigTests(SynchronousTestCase):
    def test_defaults(self) -> None:
        self.assertEqual(load_config(None), ManagerConfig())
        self.assertEqual(ManagerConfig().driver, "LOCAL")
        self.assertEqual(ManagerConfig().poll_interval, 2.0)

    def test_every_key(self) -> None:
        config = parse_config(
            "[iaas]\nDRIVER = local\nLOCAL_BIND_ADDRESS = 127.0.0.1\n\n"
            "[manager]\npoll_interval = 0.5\nboot_poll_interval = 0.1\nboot_timeout = 90\n"
            "unreachable_timeout = 45\nprobe_timeout = 3\nprobe_concurrency = 7\n"
            "list_timeout = 20\nagent_call_timeout = 30\nupload_timeout = 600\n"
            "agent_port = 61000\nlogfile = /tmp/m.log\nmetrics_interval = 2.5\n"
            "switchover_timeout = 12\n"
        )
        self.assertEqual(config, ManagerConfig(
            driver="LOCAL", driverSettings=MappingProxyType({"LOCAL_BIND_ADDRESS": "127.0.0.1"}),
            poll_interval=0.5, boot_poll_interval=0.1, boot_timeout=90,
            unreachable_timeout=45, probe_timeout=3, probe_concurrency=7, list_timeout=20,
            agent_call_timeout=30, upload_timeout=600, agent_port=61000, logfile="/tmp/m.log",
            metrics_interval=2.5, switchover_timeout=12,
        ))

    def test_failover(self) -> None:
        self.assertEqual((ManagerConfig().failover, ManagerConfig().master_lost_timeout),
                         ("manual", 10.0))
        config = parse_config("[manager]\nfailover = Auto\nmaster_lost_timeout = 2.5\n")
        self.assertEqual((config.failover, config.master_lost_timeout), ("auto", 2.5))
        e = self.assertRaises(ConfigError, parse_config,
                              "[manager]\nfailover = sometimes\nmaster_lost_timeout = 0\n")
        self.assertIn("[manager] failover: must be manual or auto", str(e))
        self.assertIn("[manager] master_lost_timeout: must be from 0.1 to 86400", str(e))

    def test_boot_poll_interval(self) -> None:
        self.assertEqual(ManagerConfig().bootPollInterval, 0.2)
        self.assertEqual(ManagerConfig(poll_interval=0.1).bootPollInterval, 0.1)
        self.assertEqual(ManagerConfig(driver="OPENNEBULA_XMLRPC").bootPollInterval, 2.0)
        self.assertEqual(ManagerConfig(boot_poll_interval=1.0).bootPollInterval, 1.0)

    def test_manager_url(self) -> None:
        self.assertEqual(parse_config("[manager]\nmanager_url = http://10.0.0.5:50000\n")
                         .manager_url, "http://10.0.0.5:50000/")
        e = self.assertRaises(ConfigError, parse_config, "[manager]\nmanager_url = 10.0.0.5\n")
        self.assertIn("[manager] manager_url: must be an http:// or https:// URL", str(e))

    def test_node_facing_url(self) -> None:
        self.assertEqual(nodeFacingUrl("http://127.0.0.1:50000/"), "http://127.0.0.1:50000/")
        self.assertEqual(nodeFacingUrl("http://0.0.0.0:50000/"),
                         f"http://{socket.getfqdn()}:50000/")
        self.assertEqual(nodeFacingUrl("http://:::50000/"), f"http://{socket.getfqdn()}:50000/")

    def test_seed_poll_agents_timer(self) -> None:
        self.assertEqual(parse_config("[manager]\npoll_agents_timer = 10\n").poll_interval, 10)

    def test_every_problem_at_once(self) -> None:
        e = self.assertRaises(ConfigError, parse_config, (
            "[iaas]\nDRIVER = EC2\n\n[manager]\npoll_interval = soon\nagent_port = 70000\n"
            "probe_concurrency = 1.5\ncolour = blue\nlogfile = relative.log\n"
            "poll_agents_timer = 3\n\n[extra]\nx = 1\n"
        ), "m.cnf")
        text = str(e)
        self.assertIn("m.cnf: 7 configuration problem(s):", text)
        for expected in [
            "[iaas] DRIVER: unknown driver 'EC2'; known: LOCAL, OPENNEBULA_XMLRPC, LIBCLOUD",
            "[manager] poll_interval: must be a number",
            "[manager] agent_port: must be from 1 to 65535",
            "[manager] probe_concurrency: must be an integer",
            "[manager] colour: unknown key; known: poll_interval,",
            "[manager] logfile: must be an absolute path",
            "[extra]: unknown section; known: iaas, manager",
        ]:
            self.assertIn(expected, text)

    def test_alias_twice(self) -> None:
        e = self.assertRaises(ConfigError, parse_config,
                              "[manager]\npoll_interval = 1\npoll_agents_timer = 2\n")
        self.assertIn("give only one", str(e))

    def test_driver_module_missing(self) -> None:
        self.patch(drivers, "DRIVERS", {**drivers.DRIVERS, "LIBCLOUD": "conpaassql.iaas.nonesuch"})
        e = self.assertRaises(ConfigError, parse_config, "[iaas]\nDRIVER = LIBCLOUD\n")
        self.assertIn("[iaas] DRIVER: driver LIBCLOUD is not available here: cannot import "
                      "conpaassql.iaas.nonesuch", str(e))

    def test_unreadable(self) -> None:
        e = self.assertRaises(ConfigError, load_config, "/nonexistent/manager.cnf")
        self.assertIn("cannot read", str(e))

    def test_sample_file(self) -> None:
        here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        self.assertEqual(load_config(os.path.join(here, "etc", "manager.cnf")).driver, "LOCAL")


class OptionsTests(SynchronousTestCase):
    def test_defaults(self) -> None:
        options = Options()
        options.parseOptions([])
        self.assertEqual(options["listen"], DEFAULT_LISTEN)
        self.assertEqual(options["listen"], "tcp:50000:interface=127.0.0.1")
        state = os.path.expanduser("~/.local/state/conpaassql/manager")
        self.assertEqual(options["state-dir"], state)
        self.assertEqual(options["token-file"], os.path.join(state, "api-token"))
        self.assertEqual(options["parsed-config"], ManagerConfig())

    def test_make_service_wires_only(self) -> None:
        state = os.path.abspath(self.mktemp())
        options = Options()
        options.parseOptions(["--state-dir", state, "--listen", "tcp:0"])
        service = makeService(options)
        self.assertIsInstance(service, ManagerService)
        assert isinstance(service, ManagerService)
        self.assertEqual(service.listen, "tcp:0")
        self.assertFalse(os.path.exists(state))

    def check(self, text: str) -> tuple[BaseException, str]:
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(text)
        out = io.StringIO()
        self.patch(sys, "stdout", out)
        options = Options()
        try:
            options.parseOptions(["--config", path, "--check-config"])
        except (SystemExit, usage.UsageError) as e:
            return e, out.getvalue()
        raise AssertionError("--check-config did not end")

    def test_check_config_ok(self) -> None:
        e, out = self.check("[manager]\npoll_interval = 1\n")
        self.assertIsInstance(e, SystemExit)
        self.assertEqual(e.code, 0)  # type: ignore[attr-defined]
        self.assertEqual(out, "configuration OK\n")

    def test_check_config_problems(self) -> None:
        e, _ = self.check("[manager]\nfoo = 1\n")
        self.assertIsInstance(e, usage.UsageError)
        self.assertIn("[manager] foo: unknown key", str(e))

    def test_driver_settings_checked_at_start(self) -> None:
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("[iaas]\nLOCAL_BIND_ADDRESS = somewhere\n")
        e = self.assertRaises(usage.UsageError, Options().parseOptions, ["--config", path])
        self.assertIn("LOCAL_BIND_ADDRESS must be an IP address", str(e))

    def test_check_config_asks_the_driver(self) -> None:
        e, _ = self.check("[iaas]\nLOCAL_BOOT_TIMEOUT = never\nLOCAL_COLOUR = red\n")
        self.assertIsInstance(e, usage.UsageError)
        self.assertIn("LOCAL_BOOT_TIMEOUT must be a number of seconds", str(e))
        self.assertIn("unknown setting LOCAL_COLOUR", str(e))
