"""Validate Kubernetes custom resources offline against a CRD's OpenAPI v3 schema.

A CRD's ``openAPIV3Schema`` is almost JSON Schema; the API server adds a few Kubernetes rules on
top, which :func:`to_json_schema` turns into JSON Schema (draft 2020-12) so that ``jsonschema``
can check a manifest the way ``kubectl apply`` (server-side, strict field validation) would:

- ``nullable: true`` also admits ``null``;
- ``x-kubernetes-int-or-string: true`` admits an integer or a string (quantities such as
  ``"500m"`` or ``1``; the ``pattern`` beside it then applies to strings only, as in Kubernetes);
- an object schema with ``properties`` but neither ``additionalProperties`` nor
  ``x-kubernetes-preserve-unknown-fields`` rejects unknown fields (strict field validation: a
  typo like ``minReplica`` is an error, not silently pruned);
- ``x-kubernetes-embedded-resource`` objects also admit ``apiVersion``, ``kind``, ``metadata``;
- ``x-kubernetes-list-type: set`` means unique items; ``map`` with ``x-kubernetes-list-map-keys``
  means no two items share the same key values (checked by an extra keyword);
- ``format: int32`` / ``int64`` bound the integer range.

Not evaluated: ``x-kubernetes-validations`` (CEL rules); :func:`cel_rule_paths` lists where they
sit so a test can show the manifests stay clear of them. The root ``metadata`` is only ``type:
object`` in a CRD (the API server checks ObjectMeta itself); callers check names separately.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
from jsonschema import validators

_INT_RANGES = {"int32": (-(2**31), 2**31 - 1), "int64": (-(2**63), 2**63 - 1)}
# RFC 1035 label, as Kubernetes checks names that become Service names
DNS1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


def to_json_schema(node: dict[str, Any]) -> dict[str, Any]:
    """Translate one OpenAPI v3 (structural) schema node, recursively."""
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key == "properties":
            out[key] = {name: to_json_schema(sub) for name, sub in value.items()}
        elif key in ("items", "not") or (key == "additionalProperties" and isinstance(value, dict)):
            out[key] = to_json_schema(value)
        elif key in ("anyOf", "allOf", "oneOf"):
            out[key] = [to_json_schema(sub) for sub in value]
        elif key.startswith("x-kubernetes-") or key in ("nullable", "format", "example", "externalDocs"):
            continue  # handled below or annotation only
        else:
            out[key] = value
    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out.setdefault("anyOf", [{"type": "integer"}, {"type": "string"}])
    fmt = node.get("format")
    if fmt in _INT_RANGES and node.get("type") == "integer":
        out["minimum"], out["maximum"] = (max(out.get("minimum", _INT_RANGES[fmt][0]), _INT_RANGES[fmt][0]),
                                          min(out.get("maximum", _INT_RANGES[fmt][1]), _INT_RANGES[fmt][1]))
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    if node.get("x-kubernetes-embedded-resource"):
        props = out.setdefault("properties", {})
        props.setdefault("apiVersion", {"type": "string"})
        props.setdefault("kind", {"type": "string"})
        props.setdefault("metadata", {"type": "object"})
    if ("properties" in out and "additionalProperties" not in node
            and not node.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    list_type = node.get("x-kubernetes-list-type")
    if list_type == "set":
        out["uniqueItems"] = True
    elif list_type == "map" and node.get("x-kubernetes-list-map-keys"):
        out["listMapKeys"] = list(node["x-kubernetes-list-map-keys"])
    return out


def _list_map_keys(validator: Any, keys: list[str], instance: Any, schema: dict[str, Any]) -> Iterator[Any]:
    if not validator.is_type(instance, "array"):
        return
    seen: dict[tuple[Any, ...], int] = {}
    for i, item in enumerate(instance):
        if not isinstance(item, dict):
            continue
        key = tuple(json.dumps(item.get(k), sort_keys=True) for k in keys)
        if key in seen:
            yield jsonschema.ValidationError(
                f"items {seen[key]} and {i} have the same list-map key {dict(zip(keys, key, strict=True))}")
        seen.setdefault(key, i)


KubernetesValidator = validators.extend(jsonschema.Draft202012Validator, {"listMapKeys": _list_map_keys})


def load_vendored(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(source record, raw openAPIV3Schema) of a file written by tests/data/deploy/vendor_kuberay_crds.py."""
    doc = json.loads(path.read_text())
    return doc["source"], doc["openAPIV3Schema"]


def validator_for(openapi_schema: dict[str, Any], check_schema: bool = False) -> Any:
    """A validator for the translated schema; ``check_schema`` also validates the translation
    against the JSON Schema meta-schema (seconds on a large CRD, so tests do it once)."""
    schema = to_json_schema(openapi_schema)
    if check_schema:
        KubernetesValidator.check_schema(schema)
    return KubernetesValidator(schema)


def errors(validator: Any, manifest: dict[str, Any]) -> list[str]:
    """Every schema violation, as 'path: message' lines (empty when valid)."""
    found = sorted(validator.iter_errors(manifest), key=lambda e: list(map(str, e.absolute_path)))
    return ["/".join(map(str, e.absolute_path)) + ": " + e.message for e in found]


def cel_rule_paths(node: Any, path: str = "") -> list[str]:
    """Property paths that carry ``x-kubernetes-validations`` (CEL) rules, which we do not evaluate."""
    found: list[str] = []
    if isinstance(node, dict):
        if "x-kubernetes-validations" in node:
            found.append(path)
        for name, sub in node.get("properties", {}).items():
            found += cel_rule_paths(sub, f"{path}.{name}" if path else name)
        if isinstance(node.get("items"), dict):
            found += cel_rule_paths(node["items"], path + "[]")
    return found


def has_path(manifest: Any, dotted: str) -> bool:
    """Whether ``manifest`` sets the field at a path from :func:`cel_rule_paths` (``a.b[].c``)."""
    nodes = [manifest]
    for part in dotted.split("."):
        is_list = part.endswith("[]")
        name = part[:-2] if is_list else part
        nodes = [n[name] for n in nodes if isinstance(n, dict) and name in n]
        if is_list:
            nodes = [x for n in nodes if isinstance(n, list) for x in n]
    return bool(nodes)
