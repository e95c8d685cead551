"""serpens-gateway: the gateway's control side (DESIGN §1, §7) around its packet loop
(gateway.c, `dp.Gateway`): its config, the route sets the controller pushes, its gRPC service
and its record in etcd."""
