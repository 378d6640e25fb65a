"""Lists each server's gRPC services and their methods through server reflection, with the
official `grpcio-reflection` client (as grpcurl `list` / `describe` would), as one JSON object:
{"HOST:PORT": {"SERVICE": ["METHOD", ...], ...}, ...}.

    python reflect_services.py 127.0.0.1:50051 127.0.0.1:50052 ...
"""

import json
import sys

import grpc
from google.protobuf.descriptor_pool import DescriptorPool
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)


def describe(address):
    with grpc.insecure_channel(address) as channel:
        # A role registers with the coordinator as its server starts: wait until it listens.
        grpc.channel_ready_future(channel).result(timeout=30)
        database = ProtoReflectionDescriptorDatabase(channel)
        pool = DescriptorPool(database)
        services = {}
        for name in database.get_services():
            service = pool.FindServiceByName(name)
            services[name] = [method.name for method in service.methods]
        return services


if __name__ == "__main__":
    print(json.dumps({address: describe(address) for address in sys.argv[1:]}))
