"""An exec with a TTY through the Python client: the terminal size sent on the resize
channel (4) is what `stty size` reports, before and after a second resize.

Usage: python tty_resize.py KUBECONFIG POD CONTAINER
Exits non-zero with the failed check on stderr.
"""
import json
import sys
import time

from kubernetes import client, config
from kubernetes.stream import stream

RESIZE_CHANNEL = 4


def read_until(resp, needle, seconds=20):
    got = ""
    deadline = time.time() + seconds
    while needle not in got and time.time() < deadline and resp.is_open():
        resp.update(timeout=1)
        got += resp.read_stdout(timeout=0.1) or ""
    return got


def main():
    kubeconfig, pod, container = sys.argv[1], sys.argv[2], sys.argv[3]
    config.load_kube_config(kubeconfig)
    api = client.CoreV1Api()
    resp = stream(api.connect_get_namespaced_pod_exec, pod, "default", container=container,
                  command=["sh"], stderr=True, stdin=True, stdout=True, tty=True,
                  _preload_content=False)
    for rows, cols in [(30, 100), (45, 132)]:
        resp.write_channel(RESIZE_CHANNEL, json.dumps({"Width": cols, "Height": rows}))
        want = "size-%d %d-end" % (rows, cols)
        got = ""
        # The resize travels apart from stdin: ask again if the shell was quicker.
        for _ in range(5):
            # The echoed command line itself never matches `want`.
            resp.write_stdin("echo size-$(stty size)-end\n")
            got += read_until(resp, want, seconds=3)
            if want in got:
                break
            time.sleep(0.2)
        assert want in got, repr(got)
    resp.write_stdin("exit 0\n")
    resp.close()
    print("tty resize ok")


if __name__ == "__main__":
    main()
