rule cluster:
    input:
        latent="results/{dataset}/{name}/seed{seed}/latent.h5ad",
        # The counts that latent.h5ad refers to (scvae.data.runfiles): markers, decoded layer
        # (with cluster: decoded; else scvae.read_run(path, decoded=True) computes it).
        counts="results/{dataset}/preprocessed.h5ad",
        diagnostics=cluster_diagnostics,
        model=cluster_model,
    output:
        final="results/{dataset}/{name}/seed{seed}/final.h5ad",
        metrics="results/{dataset}/{name}/seed{seed}/metrics.json",
        umap=report(
            "results/{dataset}/{name}/seed{seed}/figures/umap.png",
            caption="../report/umap.rst",
            category="UMAP",
            labels={"dataset": "{dataset}", "run": "{name}", "seed": "{seed}"},
        ),
        markers="results/{dataset}/{name}/seed{seed}/markers.tsv",
        marker_plot=report(
            "results/{dataset}/{name}/seed{seed}/figures/markers.png",
            caption="../report/markers.rst",
            category="Marker genes",
            labels={"dataset": "{dataset}", "run": "{name}", "seed": "{seed}"},
        ),
        known_markers_plot=report(
            "results/{dataset}/{name}/seed{seed}/figures/known_markers.png",
            caption="../report/known_markers.rst",
            category="Known marker genes",
            labels={"dataset": "{dataset}", "run": "{name}", "seed": "{seed}"},
        ),
    log:
        "logs/{dataset}/{name}/seed{seed}/cluster.log",
    params:
        cli=SCVAE,
        settings=cluster_json,
        diagnostics=lambda wc, input: f"--diagnostics {input.diagnostics}" if input.diagnostics else "",
        model=lambda wc, input: f"--model {input.model}" if input.model else "",
        # The dataset's datasets.<name>.known_markers; without them the figure is a note.
        known_markers=lambda wc: json.dumps(config["datasets"][wc.dataset].get("known_markers", {})),
    threads: config["threads"]
    group:
        small_job_group
    resources:
        mem_mb=mem_mb_from_input(factor=8, floor=2000, on_disk_factor=2),
        runtime=cluster_runtime,
    conda:
        "../../envs/scvae.yaml"
    shell:
        "{params.cli} --log {log} cluster --input {input.latent} --output {output.final} "
        "--metrics {output.metrics} {params.diagnostics} --umap-plot {output.umap} "
        "--markers {output.markers} --marker-plot {output.marker_plot} {params.model} "
        "--known-markers {params.known_markers:q} --known-markers-plot {output.known_markers_plot} "
        "--params {params.settings:q}"
