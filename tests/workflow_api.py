"""Converts a workflow in the frontend's format (workflows/*.json) to the API format POST /prompt takes,
using the server's /object_info, the way the frontend does."""

FRONTEND_ONLY = {"Note", "MarkdownNote", "Reroute", "PrimitiveNode"}
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
MUTED_MODES = {2, 4}   # never / bypass


def to_api(workflow: dict, object_info: dict) -> dict:
    links = {link[0]: link for link in workflow["links"]}
    api = {}
    for node in workflow["nodes"]:
        kind = node["type"]
        if kind in FRONTEND_ONLY or node.get("mode", 0) in MUTED_MODES:
            continue
        if kind not in object_info:
            raise KeyError(f"workflow node {node['id']} uses {kind!r}, which the server does not know")
        spec = object_info[kind]["input"]
        linked = {i["name"]: [str(links[i["link"]][1]), links[i["link"]][2]]
                  for i in node.get("inputs", []) if i.get("link") is not None}
        values = list(node.get("widgets_values") or [])
        inputs, position = {}, 0
        for name, entry in list(spec.get("required", {}).items()) + list(spec.get("optional", {}).items()):
            kind_of_input = entry[0]
            options = entry[1] if len(entry) > 1 and isinstance(entry[1], dict) else {}
            if isinstance(kind_of_input, list) or kind_of_input in WIDGET_TYPES:
                if position < len(values):
                    inputs[name] = values[position]
                position += 1
                if options.get("control_after_generate"):
                    position += 1        # the frontend's "fixed / randomize" companion value
            if name in linked:
                inputs[name] = linked[name]
        api[str(node["id"])] = {"class_type": kind, "inputs": inputs}
    return api
