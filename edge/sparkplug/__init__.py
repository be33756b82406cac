"""Sparkplug B: the gateway as an edge node, each production line a device.

    spBv1.0/<group>/NBIRTH/<node>          bdSeq, Node Control/Rebirth, node properties
    spBv1.0/<group>/DBIRTH/<node>/<line>   every metric of the line, with its datatype
    spBv1.0/<group>/DDATA/<node>/<line>    one per result
    spBv1.0/<group>/NDEATH/<node>          the second connection's will (bdSeq)
    spBv1.0/<group>/NCMD/<node>            in: Node Control/Rebirth = true

settings.py is the [sparkplug] section, payload.py builds payloads, node.py runs the second
MQTT connection. The message classes come from Eclipse Tahu's sparkplug_b.proto (copied
unchanged from eclipse/tahu, sparkplug_b/sparkplug_b.proto at 5736e40), compiled with

    pip install grpcio-tools==1.85.1 protobuf==7.36.2     # a throwaway venv
    python -m grpc_tools.protoc -I edge/sparkplug --python_out=edge/sparkplug \\
        edge/sparkplug/sparkplug_b.proto

which writes protobuf 7.35.1 gencode: it needs protobuf >= 7.35.1 at run time.
"""
