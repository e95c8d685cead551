"""The Serpens controller: the user-facing gRPC API over desired state in etcd (DESIGN §4)."""
