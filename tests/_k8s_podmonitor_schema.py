"""The schema of the Prometheus Operator's PodMonitor (monitoring.coreos.com/v1), for tests/test_k8s.py.

Vendored, because no package here ships it: ``spec.versions[v1].schema.openAPIV3Schema`` of
``example/prometheus-operator-crd/monitoring.coreos.com_podmonitors.yaml`` in
prometheus-operator/prometheus-operator at tag v0.75.0 (commit
79c225b4aa97566504f1a5dc72ea1862f9dbe900, the file's blob 2056a8b69fa014c5aac35f9a86709ac94568cdac;
Apache License 2.0), with every ``description`` removed and nothing else changed. The CRD has no
``x-kubernetes-validations`` (CEL) rules, so this is all the API server checks beyond ObjectMeta.
v0.75.0 is the oldest operator these manifests are checked against; later releases only add
fields. To regenerate::

    git show v0.75.0:example/prometheus-operator-crd/monitoring.coreos.com_podmonitors.yaml > crd.yaml
    python - <<'PY'
    import pprint, yaml
    def strip(n):
        if isinstance(n, dict):
            return {k: strip(v) for k, v in n.items() if k != "description"}
        return [strip(x) for x in n] if isinstance(n, list) else n
    [v1] = yaml.safe_load(open("crd.yaml"))["spec"]["versions"]
    print("SCHEMA =", pprint.pformat(strip(v1["schema"]["openAPIV3Schema"]), sort_dicts=False))
    PY

then ``ruff format --line-length 110``, with the pattern of a duration (too long for a line) named
``DURATION``.
"""

from __future__ import annotations

from typing import Any

VERSION = "v0.75.0"
#: Prometheus' duration ("30s", "1m30s"), the pattern of ``interval`` and ``scrapeTimeout``.
DURATION = "^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"

SCHEMA: dict[str, Any] = {
    "properties": {
        "apiVersion": {"type": "string"},
        "kind": {"type": "string"},
        "metadata": {"type": "object"},
        "spec": {
            "properties": {
                "attachMetadata": {"properties": {"node": {"type": "boolean"}}, "type": "object"},
                "bodySizeLimit": {"pattern": "(^0|([0-9]*[.])?[0-9]+((K|M|G|T|E|P)i?)?B)$", "type": "string"},
                "jobLabel": {"type": "string"},
                "keepDroppedTargets": {"format": "int64", "type": "integer"},
                "labelLimit": {"format": "int64", "type": "integer"},
                "labelNameLengthLimit": {"format": "int64", "type": "integer"},
                "labelValueLengthLimit": {"format": "int64", "type": "integer"},
                "namespaceSelector": {
                    "properties": {
                        "any": {"type": "boolean"},
                        "matchNames": {"items": {"type": "string"}, "type": "array"},
                    },
                    "type": "object",
                },
                "podMetricsEndpoints": {
                    "items": {
                        "properties": {
                            "authorization": {
                                "properties": {
                                    "credentials": {
                                        "properties": {
                                            "key": {"type": "string"},
                                            "name": {"default": "", "type": "string"},
                                            "optional": {"type": "boolean"},
                                        },
                                        "required": ["key"],
                                        "type": "object",
                                        "x-kubernetes-map-type": "atomic",
                                    },
                                    "type": {"type": "string"},
                                },
                                "type": "object",
                            },
                            "basicAuth": {
                                "properties": {
                                    "password": {
                                        "properties": {
                                            "key": {"type": "string"},
                                            "name": {"default": "", "type": "string"},
                                            "optional": {"type": "boolean"},
                                        },
                                        "required": ["key"],
                                        "type": "object",
                                        "x-kubernetes-map-type": "atomic",
                                    },
                                    "username": {
                                        "properties": {
                                            "key": {"type": "string"},
                                            "name": {"default": "", "type": "string"},
                                            "optional": {"type": "boolean"},
                                        },
                                        "required": ["key"],
                                        "type": "object",
                                        "x-kubernetes-map-type": "atomic",
                                    },
                                },
                                "type": "object",
                            },
                            "bearerTokenSecret": {
                                "properties": {
                                    "key": {"type": "string"},
                                    "name": {"default": "", "type": "string"},
                                    "optional": {"type": "boolean"},
                                },
                                "required": ["key"],
                                "type": "object",
                                "x-kubernetes-map-type": "atomic",
                            },
                            "enableHttp2": {"type": "boolean"},
                            "filterRunning": {"type": "boolean"},
                            "followRedirects": {"type": "boolean"},
                            "honorLabels": {"type": "boolean"},
                            "honorTimestamps": {"type": "boolean"},
                            "interval": {
                                "pattern": DURATION,
                                "type": "string",
                            },
                            "metricRelabelings": {
                                "items": {
                                    "properties": {
                                        "action": {
                                            "default": "replace",
                                            "enum": [
                                                "replace",
                                                "Replace",
                                                "keep",
                                                "Keep",
                                                "drop",
                                                "Drop",
                                                "hashmod",
                                                "HashMod",
                                                "labelmap",
                                                "LabelMap",
                                                "labeldrop",
                                                "LabelDrop",
                                                "labelkeep",
                                                "LabelKeep",
                                                "lowercase",
                                                "Lowercase",
                                                "uppercase",
                                                "Uppercase",
                                                "keepequal",
                                                "KeepEqual",
                                                "dropequal",
                                                "DropEqual",
                                            ],
                                            "type": "string",
                                        },
                                        "modulus": {"format": "int64", "type": "integer"},
                                        "regex": {"type": "string"},
                                        "replacement": {"type": "string"},
                                        "separator": {"type": "string"},
                                        "sourceLabels": {
                                            "items": {
                                                "pattern": "^[a-zA-Z_][a-zA-Z0-9_]*$",
                                                "type": "string",
                                            },
                                            "type": "array",
                                        },
                                        "targetLabel": {"type": "string"},
                                    },
                                    "type": "object",
                                },
                                "type": "array",
                            },
                            "oauth2": {
                                "properties": {
                                    "clientId": {
                                        "properties": {
                                            "configMap": {
                                                "properties": {
                                                    "key": {"type": "string"},
                                                    "name": {"default": "", "type": "string"},
                                                    "optional": {"type": "boolean"},
                                                },
                                                "required": ["key"],
                                                "type": "object",
                                                "x-kubernetes-map-type": "atomic",
                                            },
                                            "secret": {
                                                "properties": {
                                                    "key": {"type": "string"},
                                                    "name": {"default": "", "type": "string"},
                                                    "optional": {"type": "boolean"},
                                                },
                                                "required": ["key"],
                                                "type": "object",
                                                "x-kubernetes-map-type": "atomic",
                                            },
                                        },
                                        "type": "object",
                                    },
                                    "clientSecret": {
                                        "properties": {
                                            "key": {"type": "string"},
                                            "name": {"default": "", "type": "string"},
                                            "optional": {"type": "boolean"},
                                        },
                                        "required": ["key"],
                                        "type": "object",
                                        "x-kubernetes-map-type": "atomic",
                                    },
                                    "endpointParams": {
                                        "additionalProperties": {"type": "string"},
                                        "type": "object",
                                    },
                                    "scopes": {"items": {"type": "string"}, "type": "array"},
                                    "tokenUrl": {"minLength": 1, "type": "string"},
                                },
                                "required": ["clientId", "clientSecret", "tokenUrl"],
                                "type": "object",
                            },
                            "params": {
                                "additionalProperties": {"items": {"type": "string"}, "type": "array"},
                                "type": "object",
                            },
                            "path": {"type": "string"},
                            "port": {"type": "string"},
                            "proxyUrl": {"type": "string"},
                            "relabelings": {
                                "items": {
                                    "properties": {
                                        "action": {
                                            "default": "replace",
                                            "enum": [
                                                "replace",
                                                "Replace",
                                                "keep",
                                                "Keep",
                                                "drop",
                                                "Drop",
                                                "hashmod",
                                                "HashMod",
                                                "labelmap",
                                                "LabelMap",
                                                "labeldrop",
                                                "LabelDrop",
                                                "labelkeep",
                                                "LabelKeep",
                                                "lowercase",
                                                "Lowercase",
                                                "uppercase",
                                                "Uppercase",
                                                "keepequal",
                                                "KeepEqual",
                                                "dropequal",
                                                "DropEqual",
                                            ],
                                            "type": "string",
                                        },
                                        "modulus": {"format": "int64", "type": "integer"},
                                        "regex": {"type": "string"},
                                        "replacement": {"type": "string"},
                                        "separator": {"type": "string"},
                                        "sourceLabels": {
                                            "items": {
                                                "pattern": "^[a-zA-Z_][a-zA-Z0-9_]*$",
                                                "type": "string",
                                            },
                                            "type": "array",
                                        },
                                        "targetLabel": {"type": "string"},
                                    },
                                    "type": "object",
                                },
                                "type": "array",
                            },
                            "scheme": {"enum": ["http", "https"], "type": "string"},
                            "scrapeTimeout": {
                                "pattern": DURATION,
                                "type": "string",
                            },
                            "targetPort": {
                                "anyOf": [{"type": "integer"}, {"type": "string"}],
                                "x-kubernetes-int-or-string": True,
                            },
                            "tlsConfig": {
                                "properties": {
                                    "ca": {
                                        "properties": {
                                            "configMap": {
                                                "properties": {
                                                    "key": {"type": "string"},
                                                    "name": {"default": "", "type": "string"},
                                                    "optional": {"type": "boolean"},
                                                },
                                                "required": ["key"],
                                                "type": "object",
                                                "x-kubernetes-map-type": "atomic",
                                            },
                                            "secret": {
                                                "properties": {
                                                    "key": {"type": "string"},
                                                    "name": {"default": "", "type": "string"},
                                                    "optional": {"type": "boolean"},
                                                },
                                                "required": ["key"],
                                                "type": "object",
                                                "x-kubernetes-map-type": "atomic",
                                            },
                                        },
                                        "type": "object",
                                    },
                                    "cert": {
                                        "properties": {
                                            "configMap": {
                                                "properties": {
                                                    "key": {"type": "string"},
                                                    "name": {"default": "", "type": "string"},
                                                    "optional": {"type": "boolean"},
                                                },
                                                "required": ["key"],
                                                "type": "object",
                                                "x-kubernetes-map-type": "atomic",
                                            },
                                            "secret": {
                                                "properties": {
                                                    "key": {"type": "string"},
                                                    "name": {"default": "", "type": "string"},
                                                    "optional": {"type": "boolean"},
                                                },
                                                "required": ["key"],
                                                "type": "object",
                                                "x-kubernetes-map-type": "atomic",
                                            },
                                        },
                                        "type": "object",
                                    },
                                    "insecureSkipVerify": {"type": "boolean"},
                                    "keySecret": {
                                        "properties": {
                                            "key": {"type": "string"},
                                            "name": {"default": "", "type": "string"},
                                            "optional": {"type": "boolean"},
                                        },
                                        "required": ["key"],
                                        "type": "object",
                                        "x-kubernetes-map-type": "atomic",
                                    },
                                    "serverName": {"type": "string"},
                                },
                                "type": "object",
                            },
                            "trackTimestampsStaleness": {"type": "boolean"},
                        },
                        "type": "object",
                    },
                    "type": "array",
                },
                "podTargetLabels": {"items": {"type": "string"}, "type": "array"},
                "sampleLimit": {"format": "int64", "type": "integer"},
                "scrapeClass": {"minLength": 1, "type": "string"},
                "scrapeProtocols": {
                    "items": {
                        "enum": [
                            "PrometheusProto",
                            "OpenMetricsText0.0.1",
                            "OpenMetricsText1.0.0",
                            "PrometheusText0.0.4",
                        ],
                        "type": "string",
                    },
                    "type": "array",
                    "x-kubernetes-list-type": "set",
                },
                "selector": {
                    "properties": {
                        "matchExpressions": {
                            "items": {
                                "properties": {
                                    "key": {"type": "string"},
                                    "operator": {"type": "string"},
                                    "values": {
                                        "items": {"type": "string"},
                                        "type": "array",
                                        "x-kubernetes-list-type": "atomic",
                                    },
                                },
                                "required": ["key", "operator"],
                                "type": "object",
                            },
                            "type": "array",
                            "x-kubernetes-list-type": "atomic",
                        },
                        "matchLabels": {"additionalProperties": {"type": "string"}, "type": "object"},
                    },
                    "type": "object",
                    "x-kubernetes-map-type": "atomic",
                },
                "targetLimit": {"format": "int64", "type": "integer"},
            },
            "required": ["selector"],
            "type": "object",
        },
    },
    "required": ["spec"],
    "type": "object",
}
