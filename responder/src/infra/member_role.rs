//! `member-role.yaml`: the role the responder assumes in each account
//! `[[accounts]]` names, deployed there (one stack per account, or a
//! StackSet across the organization). It trusts only the responder's role,
//! and the external id when one is set, and may do only what the policy
//! needs in a member account: read and write its IP sets, read its WAF log
//! groups or its log bucket's prefix.

use floodgate_rules::Policy;
use floodgate_rules::policy::Infra;
use serde_json::{Value, json};

use super::{WafTargets, ip_sets_statement, rate_rules_statement, source_statements};

/// The file's name under `infra/cloudformation/`.
pub(super) const FILE: &str = "member-role.yaml";

/// The template, when the policy names accounts.
pub(super) fn template(policy: &Policy, infra: &Infra, targets: &WafTargets) -> Option<Value> {
    let first = &policy.accounts.first()?.role_arn;
    let mut statements = Vec::new();
    if !targets.member_scopes.is_empty() {
        statements.push(ip_sets_statement(
            "MemberIpSets",
            &targets.names(),
            &targets.member_scopes,
        ));
    }
    statements.extend(rate_rules_statement(
        "MemberRateRules",
        policy,
        &targets.member_scopes,
    ));
    statements.extend(source_statements(policy, true));
    let name = &infra.name;
    // The role's path, as the first account's ARN writes it (`/` for none).
    let path = first
        .as_str()
        .split_once(":role")
        .map(|(_, rest)| rest.trim_end_matches(first.role_name()))
        .unwrap_or("/");
    Some(json!({
        "AWSTemplateFormatVersion": "2010-09-09",
        "Description": format!("{name} member account role: what the responder may do in an account [[accounts]] names; generated from the Floodgate policy. Deploy it in each such account."),
        "Parameters": {
            "ResponderRoleArn": {
                "Type": "String",
                "AllowedPattern": "^arn:aws[a-z-]*:iam::[0-9]{12}:role/.+$",
                "Description": format!("The responder's role: the ResponderRoleArn output of the {name}-responder stack"),
            },
            "ExternalId": {
                "Type": "String",
                "Default": "",
                "NoEcho": true,
                "Description": "The external id the responder sends (the value of the account's external_id_env variable); empty for none",
            },
            "RoleName": {
                "Type": "String",
                "Default": first.role_name(),
                "Description": "The role's name: the last part of the account's role_arn",
            },
        },
        "Conditions": {
            "HasExternalId": { "Fn::Not": [{ "Fn::Equals": [{ "Ref": "ExternalId" }, ""] }] },
        },
        "Resources": {
            "MemberRole": { "Type": "AWS::IAM::Role", "Properties": {
                "RoleName": { "Ref": "RoleName" },
                "Path": path,
                "Description": "floodgate responder in this account: its IP sets and its WAF logs; nothing else",
                "MaxSessionDuration": 3600,
                "AssumeRolePolicyDocument": {
                    "Version": "2012-10-17",
                    "Statement": [{ "Fn::If": [
                        "HasExternalId",
                        {
                            "Effect": "Allow",
                            "Principal": { "AWS": { "Ref": "ResponderRoleArn" } },
                            "Action": "sts:AssumeRole",
                            "Condition": { "StringEquals": { "sts:ExternalId": { "Ref": "ExternalId" } } },
                        },
                        {
                            "Effect": "Allow",
                            "Principal": { "AWS": { "Ref": "ResponderRoleArn" } },
                            "Action": "sts:AssumeRole",
                        },
                    ] }],
                },
                "Policies": [{ "PolicyName": "floodgate-member", "PolicyDocument": { "Version": "2012-10-17", "Statement": statements } }],
            } },
        },
        "Outputs": {
            "MemberRoleArn": { "Value": { "Fn::GetAtt": ["MemberRole", "Arn"] } },
        },
    }))
}
