"""The master's domain errors; server.py maps each to one gRPC status code."""


class MasterError(Exception):
    pass


class NotFound(MasterError):
    pass


class InvalidArgument(MasterError):
    pass


class FailedPrecondition(MasterError):
    """Wrong state for the operation (pause a paused sandbox, delete a template in use)."""


class AlreadyExists(MasterError):
    pass


class Exhausted(MasterError):
    """No node has room, or the team's quota would be exceeded; retrying right away will not help."""


class Unavailable(MasterError):
    """etcd or a node could not be reached; nothing was left half-written."""


class NodeUnreachable(Unavailable):
    """A node's gRPC server could not be reached (gRPC UNAVAILABLE): another node may do."""


class Unauthenticated(MasterError):
    pass


class PermissionDenied(MasterError):
    """An admin-only call, or a change to a public template, by a caller that is not an admin."""


class NodeAnswered(MasterError):
    """A node's own answer, relayed to the client unchanged: its status code (a grpc.StatusCode)
    and its message (the volume content calls, services/master/volumes.py)."""

    def __init__(self, code, message: str):
        super().__init__(message)
        self.code = code
