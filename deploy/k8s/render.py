#!/usr/bin/env python3
"""Kubernetes manifests for a herd, from its herd file.

    render.py manifests HERD_FILE [--image IMAGE] [--storage SIZE]   > herd.yaml
    render.py secret CERTS_DIR                                        > secret.yaml
    render.py check HERD_FILE MANIFESTS                               (exit 1 if stale)

`manifests` writes, for every [[server]] of the herd file: a StatefulSet of one pod
(`<server>`, lower case; its pod `<server>-0` has the stable DNS name `<server>-0.herd`
under the headless Service `herd`, which must be the server's `host`), with its data dir
on a volume claim, health and readiness probes on `herd health` (the image has no
shell: the probe runs the binary), and a Service `<server>` for its clients' port;
plus the headless Service `herd` and the ConfigMap `herd-config` carrying the herd
file. The peer credentials come from the Secret `herd-peer` (`secret` writes it from
the files `herd certs` and `openssl rand` made: ca.pem, <NAME>.pem, <NAME>.key,
herd.secret), never from these manifests.

Standard library only: the YAML is written by a small emitter of its own (dicts, lists,
strings, numbers, booleans) so that rendering needs no PyYAML; every one-line string is
quoted as JSON, which is valid YAML, so no value can be misread, and a file (the herd
file in the ConfigMap) is a literal block.
"""

import argparse
import base64
import json
import os
import sys
import tomllib

LABEL = "app.kubernetes.io/name"


def dump(value, indent=0):
    """YAML for `value` (a block style document of dicts, lists and scalars)."""
    pad = "  " * indent
    out = []
    if isinstance(value, dict):
        for k, v in value.items():
            if isinstance(v, (dict, list)) and v:
                out.append(f"{pad}{k}:")
                out.append(dump(v, indent + 1))
            elif isinstance(v, str) and "\n" in v:
                # A file (the herd file): a literal block, kept as it reads.
                out.append(f"{pad}{k}: |" + ("" if v.endswith("\n") else "-"))
                out.extend(f"{pad}  {line}".rstrip() for line in v.rstrip("\n").split("\n"))
            else:
                out.append(f"{pad}{k}: {scalar(v)}")
    elif isinstance(value, list):
        for v in value:
            if isinstance(v, (dict, list)) and v:
                inner = dump(v, indent + 1).lstrip()
                out.append(f"{pad}- {inner}")
            else:
                out.append(f"{pad}- {scalar(v)}")
    else:
        out.append(pad + scalar(value))
    return "\n".join(out)


def scalar(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return str(v)
    if v == {}:
        return "{}"
    if v == []:
        return "[]"
    return json.dumps(v)


def herd_servers(path):
    with open(path, "rb") as f:
        herd = tomllib.load(f)
    servers = herd.get("server", [])
    if not servers:
        sys.exit(f"{path}: no [[server]] entries")
    for s in servers:
        want = f"{s['name'].lower()}-0.herd"
        if s.get("host") != want:
            sys.exit(f"{path}: server {s['name']}'s host is {s.get('host')!r}; on Kubernetes it must be {want!r} (its pod under the headless Service herd)")
    return servers


def manifests(path, image, storage):
    with open(path) as f:
        text = f.read()
    servers = herd_servers(path)
    docs = [
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "herd-config", "labels": {LABEL: "herd"}},
            "data": {"herd.toml": text},
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "herd", "labels": {LABEL: "herd"}},
            "spec": {
                # Headless: a DNS name per pod, and neighbours can dial a pod before
                # it is ready (its links are part of getting ready).
                "clusterIP": "None",
                "publishNotReadyAddresses": True,
                "selector": {LABEL: "herd"},
            },
        },
    ]
    for s in servers:
        name, low = s["name"], s["name"].lower()
        cport, pport = s["client_port"], s["peer_port"]
        probe = ["/usr/local/bin/herd", "health", "--addr", f"127.0.0.1:{pport}", "--server", name,
                 "--config", "/etc/herd/herd.toml"]
        docs.append({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": low, "labels": {LABEL: "herd", "herd/server": low}},
            "spec": {
                "selector": {LABEL: "herd", "herd/server": low},
                "ports": [{"name": "client", "port": cport, "targetPort": cport}],
            },
        })
        docs.append({
            "apiVersion": "apps/v1",
            "kind": "StatefulSet",
            "metadata": {"name": low, "labels": {LABEL: "herd", "herd/server": low}},
            "spec": {
                "serviceName": "herd",
                "replicas": 1,
                "selector": {"matchLabels": {LABEL: "herd", "herd/server": low}},
                "template": {
                    "metadata": {"labels": {LABEL: "herd", "herd/server": low}},
                    "spec": {
                        "terminationGracePeriodSeconds": 30,
                        "securityContext": {"runAsUser": 10001, "runAsGroup": 10001,
                                            "fsGroup": 10001, "runAsNonRoot": True},
                        "containers": [{
                            "name": "herd",
                            "image": image,
                            "imagePullPolicy": "IfNotPresent",
                            "args": ["serve", name, "--config", "/etc/herd/herd.toml",
                                     "--log-dir", "/var/log/herd", "--data-dir", "/var/lib/herd"],
                            "ports": [
                                {"name": "client", "containerPort": cport},
                                {"name": "peer", "containerPort": pport},
                            ],
                            "readinessProbe": {"exec": {"command": probe}, "periodSeconds": 5,
                                               "timeoutSeconds": 3, "failureThreshold": 2},
                            "livenessProbe": {"exec": {"command": probe}, "initialDelaySeconds": 30,
                                              "periodSeconds": 10, "timeoutSeconds": 3,
                                              "failureThreshold": 6},
                            "resources": {"requests": {"cpu": "250m", "memory": "256Mi"}},
                            "securityContext": {"readOnlyRootFilesystem": True,
                                                "allowPrivilegeEscalation": False,
                                                "capabilities": {"drop": ["ALL"]}},
                            "volumeMounts": [
                                {"name": "config", "mountPath": "/etc/herd/herd.toml",
                                 "subPath": "herd.toml", "readOnly": True},
                                {"name": "peer", "mountPath": "/etc/herd/certs", "readOnly": True},
                                {"name": "data", "mountPath": "/var/lib/herd"},
                                {"name": "logs", "mountPath": "/var/log/herd"},
                            ],
                        }],
                        "volumes": [
                            {"name": "config", "configMap": {"name": "herd-config"}},
                            {"name": "peer", "secret": {"secretName": "herd-peer", "defaultMode": 0o440}},
                            {"name": "logs", "emptyDir": {}},
                        ],
                    },
                },
                "volumeClaimTemplates": [{
                    "metadata": {"name": "data"},
                    "spec": {"accessModes": ["ReadWriteOnce"],
                             "resources": {"requests": {"storage": storage}}},
                }],
            },
        })
    head = ("# Generated by deploy/k8s/render.py from deploy/k8s/herd.toml; do not edit by hand:\n"
            "#     python3 deploy/k8s/render.py manifests deploy/k8s/herd.toml > deploy/k8s/herd.yaml\n")
    return head + "".join(f"---\n{dump(d)}\n" for d in docs)


def secret(certs):
    data = {}
    for f in sorted(os.listdir(certs)):
        # The CA's own key signs certificates; no server needs it, so it stays out.
        if f.endswith((".pem", ".key", ".secret")) and f != "ca.key":
            with open(os.path.join(certs, f), "rb") as fh:
                data[f] = base64.b64encode(fh.read()).decode()
    if "ca.pem" not in data or "herd.secret" not in data:
        sys.exit(f"{certs}: needs ca.pem (herd certs) and herd.secret (openssl rand -hex 32 > herd.secret)")
    doc = {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
           "metadata": {"name": "herd-peer", "labels": {LABEL: "herd"}}, "data": data}
    return f"---\n{dump(doc)}\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("manifests")
    m.add_argument("herd_file")
    m.add_argument("--image", default="herd:latest")
    m.add_argument("--storage", default="1Gi")
    s = sub.add_parser("secret")
    s.add_argument("certs")
    c = sub.add_parser("check")
    c.add_argument("herd_file")
    c.add_argument("manifests")
    args = ap.parse_args()
    if args.cmd == "manifests":
        sys.stdout.write(manifests(args.herd_file, args.image, args.storage))
    elif args.cmd == "secret":
        sys.stdout.write(secret(args.certs))
    else:
        with open(args.manifests) as f:
            if f.read() != manifests(args.herd_file, "herd:latest", "1Gi"):
                sys.exit(f"{args.manifests} is not what render.py makes of {args.herd_file}: regenerate it")
    return 0


if __name__ == "__main__":
    sys.exit(main())
