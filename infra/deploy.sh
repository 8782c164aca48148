#!/usr/bin/env bash
# Deploys Floodgate's stacks in the order infra/cloudformation/deployments.tsv
# lists them (that file is written by `floodgate render-infra` from the
# policy): the web ACL in every region of the policy's targets, the web ACL
# for CloudFront in us-east-1, then the responder (and with a lease, its
# standby in a second region, FLOODGATE_STANDBY_VPC / _SUBNET_A / _SUBNET_B).
#
#   infra/deploy.sh --dry-run     # print the commands, run nothing
#   FLOODGATE_IMAGE=... FLOODGATE_VPC=vpc-... FLOODGATE_SUBNET_A=subnet-... \
#     FLOODGATE_SUBNET_B=subnet-... infra/deploy.sh
#
# With [[accounts]] in the policy, run it once more with credentials of each
# member account: it deploys the role the responder assumes there
# (member-role.yaml), trusting FLOODGATE_RESPONDER_ROLE_ARN (the responder
# stack's ResponderRoleArn output) and, if set, FLOODGATE_EXTERNAL_ID. Deploy
# waf.yaml in that account's regions as well (infra/README.md; a StackSet
# does both across an organization).
#
#   FLOODGATE_RESPONDER_ROLE_ARN=arn:aws:iam::...:role/... infra/deploy.sh --member-account
#
# Needs the AWS CLI and credentials allowed to deploy CloudFormation stacks.
set -euo pipefail

dry_run=false
member=false
for option in "$@"; do
    case "$option" in
        --dry-run) dry_run=true ;;
        --member-account) member=true ;;
        -h | --help)
            sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'
            exit 0
            ;;
        *)
            echo "deploy.sh: unknown option $option (try --help)" >&2
            exit 1
            ;;
    esac
done

# Template paths are as the script was called (relative to the caller's
# directory, or absolute), so a dry run's commands work as printed there.
templates=$(dirname "$0")/cloudformation
list=$templates/deployments.tsv
[ -f "$list" ] || { echo "deploy.sh: no $list; run floodgate render-infra first" >&2; exit 1; }

if $member; then
    [ -f "$templates/member-role.yaml" ] || {
        echo "deploy.sh: no $templates/member-role.yaml: the policy has no [[accounts]]" >&2
        exit 1
    }
    if ! $dry_run && [ -z "${FLOODGATE_RESPONDER_ROLE_ARN:-}" ]; then
        echo "deploy.sh: set FLOODGATE_RESPONDER_ROLE_ARN to the responder stack's ResponderRoleArn output" >&2
        exit 1
    fi
    # IAM is global: the role's stack lives in us-east-1 whatever the
    # account's WAF regions. The external id goes as a parameter, never
    # into a file.
    command=(aws cloudformation deploy --stack-name floodgate-member-role --region us-east-1
        --template-file "$templates/member-role.yaml"
        --capabilities CAPABILITY_NAMED_IAM --no-fail-on-empty-changeset
        --parameter-overrides "ResponderRoleArn=${FLOODGATE_RESPONDER_ROLE_ARN:-<FLOODGATE_RESPONDER_ROLE_ARN>}")
    if [ -n "${FLOODGATE_EXTERNAL_ID:-}" ]; then
        command+=("ExternalId=$FLOODGATE_EXTERNAL_ID")
    fi
    if $dry_run; then
        echo "${command[*]}" | sed 's/ExternalId=[^ ]*/ExternalId=<hidden>/'
    else
        echo "==> floodgate-member-role in us-east-1" >&2
        "${command[@]}"
    fi
    exit 0
fi

# A real run checks every setting first, names every one that is missing at
# once, and so never stops halfway.
if ! $dry_run; then
    missing=()
    for name in $(grep -o '\$FLOODGATE_[A-Z0-9_]*' "$list" | tr -d '$' | sort -u); do
        [ -n "${!name:-}" ] || missing+=("$name")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        echo "deploy.sh: set ${missing[*]} (see infra/README.md, \"Deploying\")" >&2
        exit 1
    fi
fi

# Replaces $FLOODGATE_* placeholders with their values; in a dry run an unset
# one is shown as <FLOODGATE_...>.
expand() {
    local word=$1 name value
    while [[ $word =~ \$(FLOODGATE_[A-Z0-9_]+) ]]; do
        name=${BASH_REMATCH[1]}
        value=${!name:-<$name>}
        word=${word/\$$name/$value}
    done
    printf '%s' "$word"
}

while IFS=$'\t' read -r stack region template parameters; do
    [[ -z $stack || $stack == \#* ]] && continue
    command=(aws cloudformation deploy --stack-name "$stack" --region "$region"
        --template-file "$templates/$template"
        --capabilities CAPABILITY_IAM --no-fail-on-empty-changeset)
    if [ -n "$parameters" ]; then
        command+=(--parameter-overrides)
        for parameter in $parameters; do
            command+=("$(expand "$parameter")")
        done
    fi
    if $dry_run; then
        echo "${command[*]}"
    else
        echo "==> $stack in $region" >&2
        "${command[@]}"
    fi
done <"$list"
