"""The Docker Cloud API as a client sees it: credentials, authenticated REST calls, and the
namespace part of resource paths. The source (`sources.dockercloud`) and the `dockercloud`
action both use it; it imports neither.
"""
