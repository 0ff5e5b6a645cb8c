# emoprobe: where inside a language model is emotion recognised?
# Probing experiment of Tak et al. (2025) on the crowd-enVENT corpus.


configfile: "config.yaml"


report: "report/workflow.rst"


include: "rules/common.smk"
include: "rules/corpus.smk"
include: "rules/models.smk"
include: "rules/extract.smk"
include: "rules/answer.smk"
include: "rules/probe.smk"
include: "rules/conditional.smk"
include: "rules/interventions.smk"
include: "rules/aggregate.smk"
include: "rules/figures.smk"


rule all:
    default_target: True
    input:
        plan.all_targets(config),
    localrule: True


onsuccess:
    for model in MODELS:
        table = plan.path(plan.TEXT_TABLE, model=model)
        if os.path.exists(table):
            print(open(table).read())
