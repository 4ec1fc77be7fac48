"""The workflow's stages, file to file: one module per ``scvae`` subcommand.

Each module holds the function its subcommand calls (``scvae train`` ->
:func:`scvae.stages.train.run_train`), which the workflow rule of the same name runs
through the command line. Stage code reads files, calls the library (which takes and
returns AnnData and arrays) and writes files; the library never imports it.
"""
