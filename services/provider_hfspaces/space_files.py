"""The fixed files of a TuneFleet Space: a README whose YAML makes it a Docker Space on port 7860, a Dockerfile FROM
a stock PyTorch image, and ``start.py``, the start command.

Nothing here depends on the job: the bundle URL and the other signed URLs reach the Space as its secrets (its
environment), never as files, so a public Space shows nothing of the job. ``start.py`` keeps an HTTP server
answering on the app port (a Space whose port never answers stays APP_STARTING and then fails with a launch
time-out) and runs the pod start command's snippet (``trainer.bootstrap.START_SNIPPET``: fetch the bundle, run its
``bootstrap.py``) as a child, so the server outlives it. With ``TUNEFLEET_HOLD_AFTER_EXIT=1`` the bootstrap holds
after its end; start.py holds too if it ever returns, so the Space never exits and never crash-loops: the provider
pauses it once it has the end report.

The container runs as uid 1000 on the Hub, where the image's folders are not writable: the job's work folder, the
trainer's venv and the Hugging Face cache go under /tmp.
"""

from __future__ import annotations

import re

from trainer.bootstrap import START_SNIPPET

APP_PORT = 7860
#: The tag that marks TuneFleet's Spaces on the Hub (a user listing their Spaces can tell them apart).
TAG = "tunefleet"

README = f"""---
title: TuneFleet training
colorFrom: blue
colorTo: gray
sdk: docker
app_port: {APP_PORT}
pinned: false
tags:
  - {TAG}
---

A fine-tuning workload started by TuneFleet. Its configuration reaches it as Space secrets; these files are the same
for every job. TuneFleet pauses the Space when the job ends.
"""

START_PY = f'''"""TuneFleet's start command on a Hugging Face Space: answer on the app port, run the bootstrap."""
import http.server
import os
import subprocess
import sys
import threading
import time

SNIPPET = {START_SNIPPET!r}


class Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = b"TuneFleet training workload\\n"
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_HEAD(self):
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


def main():
    port = int(os.environ.get("PORT") or {APP_PORT})
    server = http.server.ThreadingHTTPServer(("0.0.0.0", port), Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    print("[start] answering on port %d; starting the bootstrap" % port, flush=True)
    code = subprocess.call([sys.executable, "-c", SNIPPET])
    print("[start] the bootstrap ended (exit code %s); holding" % code, flush=True)
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    main()
'''

#: Docker image references as Docker accepts them: a Dockerfile is text, so nothing else may reach its FROM line.
IMAGE = re.compile(r"^[a-z0-9][a-z0-9._/-]*(:[A-Za-z0-9_][A-Za-z0-9._-]{0,127})?(@sha256:[0-9a-f]{64})?$")


def dockerfile(image: str) -> str:
    if not IMAGE.match(image):
        raise ValueError(f"{image!r} is not a Docker image reference")
    return (f"FROM {image}\n"
            "WORKDIR /app\n"
            "COPY start.py /app/start.py\n"
            "ENV PYTHONUNBUFFERED=1 HOME=/tmp/home TUNEFLEET_WORKDIR=/tmp/tunefleet-job "
            "TUNEFLEET_VENV_DIR=/tmp/tunefleet-venv HF_HOME=/tmp/huggingface\n"
            f"EXPOSE {APP_PORT}\n"
            'CMD ["python3", "start.py"]\n')


def space_files(image: str) -> dict[str, bytes]:
    """Path in the Space's repo → content."""
    return {"README.md": README.encode(), "Dockerfile": dockerfile(image).encode(), "start.py": START_PY.encode()}
