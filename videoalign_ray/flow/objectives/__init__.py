"""Training objectives of the flow generator, one module each, found by name through :mod:`.registry`.

An objective declares its name, config section (a pydantic model whose fields become flags and YAML keys),
the batch columns its loss reads, its metric keys and its loss (:class:`.base.Objective`). The training loops
call ``get_objective(name).loss(ctx, batch, generator)`` and never switch on the name.
"""
