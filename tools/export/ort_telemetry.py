"""onnxruntime's built-in telemetry off before onnxruntime is imported (the Node side: lib/model/telemetry.ts).

onnxruntime's official wheels carry Microsoft's 1DS telemetry: a device id and an event database under
$HOME/.cache/Microsoft/DeveloperTools/.onnxruntime/, a /tmp/mat-debug-<pid>.log, and uploads where egress allows.
onnxruntime reads ORT_DISABLE_TELEMETRY once, when it creates its environment, so this module is imported before
`import onnxruntime` by every module of the tool that uses it. MLMF_ORT_TELEMETRY=1 is the operator's opt-in.
"""

from __future__ import annotations

import os

OPT_IN = "MLMF_ORT_TELEMETRY"


def apply(env: "os._Environ[str] | dict[str, str]" = os.environ) -> bool:
    """Sets ORT_DISABLE_TELEMETRY from the opt-in; returns whether telemetry stays on."""
    on = env.get(OPT_IN, "").strip().lower() in ("1", "true", "yes")
    env["ORT_DISABLE_TELEMETRY"] = "0" if on else "1"
    return on


apply()
