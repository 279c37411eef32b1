"""
The files shipped in etc/ are valid as shipped.
"""

from __future__ import annotations

import os
import subprocess
import sys

from twisted.trial.unittest import SynchronousTestCase

from conpaassql.agent.config import load_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLE = os.path.join(ROOT, "etc", "agent.cnf")


class SampleAgentConfigTests(SynchronousTestCase):
    def test_parses(self) -> None:
        """
        etc/agent.cnf, which the README points at, parses: managed mode on
        a free port on 127.0.0.1, and no credentials in it.
        """
        config = load_config(SAMPLE)
        self.assertEqual(config.server.mode, "managed")
        self.assertEqual(config.server.mysqld_port, 0)
        self.assertEqual(config.server.bind_address, "127.0.0.1")
        self.assertEqual(config.root.password, "")
        self.assertIsNone(config.mysql.path_mysql_ssr)

    def test_has_the_original_sections(self) -> None:
        """The original's section and key names are all there, documented."""
        with open(SAMPLE) as f:
            text = f.read()
        for name in ("[MySQL_root_connection]", "[MySQL_configuration]", "location",
                     "username", "password", "my_cnf_file", "path_mysql_ssr"):
            self.assertIn(name, text)

    def test_check_config(self) -> None:
        """
        C{twistd conpaassql-agent --config etc/agent.cnf --check-config}
        accepts it and starts nothing.
        """
        twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
        result = subprocess.run(
            [twistd, "conpaassql-agent", "--config", SAMPLE, "--check-config"],
            capture_output=True, text=True, check=False, timeout=120, cwd=ROOT,
        )
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        self.assertIn("configuration OK", result.stdout)
