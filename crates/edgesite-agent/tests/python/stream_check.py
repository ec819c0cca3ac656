"""The Python client's exec and port-forward streams through the node tunnel.

Usage: python stream_check.py KUBECONFIG POD PORT
Exits non-zero with the failed check on stderr.
"""
import socket
import sys
import time

from kubernetes import client, config
from kubernetes.stream import portforward, stream


def main():
    kubeconfig, pod, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    config.load_kube_config(kubeconfig)
    api = client.CoreV1Api()

    out = stream(api.connect_get_namespaced_pod_exec, pod, "default", container="main",
                 command=["sh", "-c", "echo py-out"],
                 stderr=True, stdin=False, stdout=True, tty=False)
    assert out == "py-out\n", repr(out)

    resp = stream(api.connect_get_namespaced_pod_exec, pod, "default", container="main",
                  command=["sh", "-c", "echo to-err >&2; exit 3"],
                  stderr=True, stdin=False, stdout=True, tty=False,
                  _preload_content=False)
    resp.run_forever(timeout=20)
    err = resp.read_stderr()
    assert resp.returncode == 3, resp.returncode
    assert err == "to-err\n", repr(err)

    resp = stream(api.connect_get_namespaced_pod_exec, pod, "default", container="main",
                  command=["sh", "-c", "read line; echo got:$line"],
                  stderr=True, stdin=True, stdout=True, tty=False,
                  _preload_content=False)
    resp.write_stdin("py-stdin\n")
    got = ""
    deadline = time.time() + 20
    while "got:py-stdin" not in got and time.time() < deadline and resp.is_open():
        resp.update(timeout=1)
        got += resp.read_stdout(timeout=0.1) or ""
    resp.close()
    assert got == "got:py-stdin\n", repr(got)

    pf = portforward(api.connect_get_namespaced_pod_portforward, pod, "default",
                     ports=str(port))
    sock = pf.socket(port)
    sock.setblocking(True)
    sock.settimeout(20)
    sock.sendall(b"GET /index.html HTTP/1.0\r\n\r\n")
    data = b""
    while b"hello-through-the-tunnel" not in data:
        try:
            chunk = sock.recv(4096)
        except socket.timeout:
            break
        if not chunk:
            break
        data += chunk
    sock.close()
    assert data.startswith(b"HTTP/1.") and b"hello-through-the-tunnel" in data, repr(data)
    err = pf.error(port)
    assert err is None, err
    print("python streams ok")


if __name__ == "__main__":
    main()
