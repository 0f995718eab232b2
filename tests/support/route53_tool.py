"""Route 53 at a test endpoint (moto_server), for gale's tests, over boto3.

  route53_tool.py [--endpoint URL] create-zone NAME
        prints the new hosted zone's id (without "/hostedzone/")
  route53_tool.py [--endpoint URL] records ZONE_ID
        prints every record set of the zone (all ListResourceRecordSets
        pages), each as boto3 returns it, in a JSON list
  route53_tool.py [--endpoint URL] change ZONE_ID CHANGE_BATCH_JSON
        sends one ChangeResourceRecordSets (e.g. a record "someone else"
        owns); prints the ChangeInfo
  route53_tool.py [--endpoint URL] health-checks
        prints every health check (all ListHealthChecks pages)

The endpoint is --endpoint or $GALE_TEST_ROUTE53. Credentials are dummies
unless the environment sets AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY.
Output is JSON on stdout; on an error the message goes to stderr and the
exit status is 1.
"""

import argparse
import json
import os
import sys

import boto3
import botocore.config
import botocore.exceptions


def client(endpoint):
    return boto3.client(
        "route53",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id=os.environ.get("AWS_ACCESS_KEY_ID", "testing"),
        aws_secret_access_key=os.environ.get("AWS_SECRET_ACCESS_KEY", "testing"),
        # A test wants to see a failure, not botocore retrying it away
        # ("max_attempts" would count retries: 1 means two attempts).
        config=botocore.config.Config(retries={"total_max_attempts": 1}),
    )


def create_zone(r53, name):
    reply = r53.create_hosted_zone(Name=name, CallerReference=f"gale-test-{os.urandom(8).hex()}")
    return reply["HostedZone"]["Id"].removeprefix("/hostedzone/")


def records(r53, zone):
    sets = []
    for page in r53.get_paginator("list_resource_record_sets").paginate(HostedZoneId=zone):
        sets.extend(page["ResourceRecordSets"])
    return sets


def change(r53, zone, batch):
    reply = r53.change_resource_record_sets(HostedZoneId=zone, ChangeBatch=json.loads(batch))
    return reply["ChangeInfo"]


def health_checks(r53):
    checks = []
    for page in r53.get_paginator("list_health_checks").paginate():
        checks.extend(page["HealthChecks"])
    return checks


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--endpoint", default=os.environ.get("GALE_TEST_ROUTE53"))
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("create-zone").add_argument("name")
    sub.add_parser("records").add_argument("zone")
    c = sub.add_parser("change")
    c.add_argument("zone")
    c.add_argument("batch")
    sub.add_parser("health-checks")
    args = parser.parse_args()
    if not args.endpoint:
        sys.exit("route53_tool.py: no endpoint (--endpoint or GALE_TEST_ROUTE53)")

    r53 = client(args.endpoint)
    try:
        if args.command == "create-zone":
            out = create_zone(r53, args.name)
        elif args.command == "records":
            out = records(r53, args.zone)
        elif args.command == "change":
            out = change(r53, args.zone, args.batch)
        else:
            out = health_checks(r53)
    except botocore.exceptions.ClientError as e:
        # The status too: moto's authentication errors have a body botocore
        # cannot read (ErrorResponse/Errors/Error), so their code is empty.
        status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        print(f"route53_tool.py {args.command}: HTTP {status}: {e}", file=sys.stderr)
        sys.exit(1)
    except (botocore.exceptions.BotoCoreError, ValueError) as e:
        print(f"route53_tool.py {args.command}: {e}", file=sys.stderr)
        sys.exit(1)
    # default=str: ChangeInfo's SubmittedAt is a datetime.
    json.dump(out, sys.stdout, default=str)
    print()


if __name__ == "__main__":
    main()
