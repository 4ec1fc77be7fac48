rule map:
    input:
        model="results/{dataset}/{variant}/seed{seed}/model.pt",
        reference="results/{dataset}/{variant}/seed{seed}/latent.h5ad",
        query=query_input,
    output:
        query="results/{dataset}/{variant}/seed{seed}/map/{query}/query.h5ad",
        joint="results/{dataset}/{variant}/seed{seed}/map/{query}/joint.h5ad",
        record="results/{dataset}/{variant}/seed{seed}/map/{query}/map.json",
        model="results/{dataset}/{variant}/seed{seed}/map/{query}/model.pt",
        umap=report(
            "results/{dataset}/{variant}/seed{seed}/map/{query}/figures/map_umap.png",
            caption="../report/map_umap.rst",
            category="Mapping",
            labels={"query": "{query}", "reference": "{dataset} {variant} seed{seed}"},
        ),
    log:
        "logs/{dataset}/{variant}/seed{seed}/map/{query}.log",
    wildcard_constraints:
        query="|".join(map(re.escape, config["query"])),
    params:
        cli=SCVAE,
        options=query_options,
        settings=query_json,
    threads: config["threads"]
    resources:
        mem_mb=mem_mb_from_input(factor=6, floor=2000),
        runtime=runtime_from_input(minutes=20, per_gb=60),
    conda:
        "../../envs/scvae.yaml"
    shell:
        "{params.cli} --log {log} map --model {input.model} --reference {input.reference} "
        "--query {input.query} --output {output.query} --joint {output.joint} "
        "--record {output.record} --model-out {output.model} --umap-plot {output.umap} "
        "{params.options} --params {params.settings:q} --threads {threads}"
