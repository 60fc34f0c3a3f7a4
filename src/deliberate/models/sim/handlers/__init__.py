"""Roles the sim plays beyond generator, critic and refiner, one module each.

A module here defines ``HANDLER``, an object with ``name``, ``matches(text)`` and
``respond(ctx)`` (see :class:`deliberate.models.sim.core.RoleHandler`). Handlers are
found by module name, in sorted order; the first whose ``matches`` accepts the last
user message answers. Match on the tags of the role's own template.
"""
