# emoprobe: where inside a language model is emotion recognised?
# Probing experiment of Tak et al. (2025) on the crowd-enVENT corpus.


configfile: "config.yaml"


include: "rules/common.smk"
include: "rules/corpus.smk"
include: "rules/models.smk"
include: "rules/extract.smk"
include: "rules/probe.smk"
include: "rules/report.smk"


localrules:
    all,
    aggregate_accuracy,
    plot_accuracy,


rule all:
    input:
        "results/accuracy.tsv",
        "results/figures/accuracy_by_layer.png",
        "results/figures/accuracy_by_layer.pdf",
        expand("results/tables/{model}_accuracy_by_layer.txt", model=MODELS),
    default_target: True


onsuccess:
    for model in MODELS:
        table = f"results/tables/{model}_accuracy_by_layer.txt"
        if os.path.exists(table):
            print(open(table).read())
