"""The robot-side modules import neither torch nor ray (checked in a fresh interpreter)."""

import subprocess
import sys


def test_client_protocol_broker_import_no_torch():
    code = (
        "import sys\n"
        "import policy_server.client, policy_server.protocol\n"
        "import policy_server.broker, policy_server.validation\n"
        "from policy_server.client import PolicyClient\n"
        "PolicyClient('http://127.0.0.1:9'); PolicyClient('ws://127.0.0.1:9')\n"
        "heavy = sorted(m for m in ('torch', 'ray', 'fastapi', 'vla') if m in sys.modules)\n"
        "assert not heavy, heavy\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
