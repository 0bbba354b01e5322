"""Write the project's small synthetic text corpora (legal, medical, general) under data/.

Everything is generated from hand-written templates and vocabularies in this file with a fixed seed, so
the output is byte-for-byte reproducible and needs no download:

    python scripts/make_text_corpora.py [--out data] [--seed 0]

Outputs (JSON Lines, UTF-8):
    legal/{train,validation,test}.jsonl     {"text"}: contract sections and openings, statutes, case summaries,
                                            court reasoning
    medical/{train,validation,test}.jsonl   {"text"}: clinical notes, discharge summaries, patient leaflets,
                                            prescribing information, research abstracts
    {legal,medical}/instructions.jsonl      {"prompt", "completion"}: domain questions and answers
    {legal,medical}/chat.jsonl              {"messages": [...]}: short multi-turn conversations
    general/train.jsonl                     {"text"}: everyday English, for replay during training
    general/validation.jsonl                {"text"}: everyday English, for measuring forgetting

Validation and test are template-disjoint from training: every pool of document types, sentence frames, layouts
and names is cut into a training group and a held-out group (see "held-out groups" below), and validation and
test are written from the held-out group only (the two share that group, not a passage). `held_out_strings()`
lists the held-out group's literal frames and names, so a test can check that none of them reaches training.

The texts are fictional: names, courts, statutes, patients and doses are invented for training and
testing language models; none of it is legal or medical advice.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from finetune.io import atomic_write_text  # noqa: E402

# Passages per split. Training: far more (and more varied) than the main job's 60 steps read. Validation and test:
# as many as before, so evaluation stays quick.
DOMAIN_SIZES = {"train": 1000, "validation": 60, "test": 60}
GENERAL_SIZES = {"train": 400, "validation": 60}  # general/train.jsonl is for replay; no general test split
# Words per passage, by group: training varies from a short clause to a contract opening; held-out passages keep
# the former 60-200 words, so evaluation costs what it did. General text is plainer and shorter.
DOMAIN_WORDS = {"train": (30, 450), "heldout": (60, 200)}
GENERAL_WORDS = {"train": (30, 200), "heldout": (40, 200)}

# ============================================================== shared helpers


def fill(rng: random.Random, template: str, vocab: dict[str, list[str]], fixed: dict[str, str]) -> str:
    """Replace each {slot} in `template`: from `fixed` when given there, else a random choice from `vocab`."""
    values = dict(fixed)
    for key, options in vocab.items():
        if "{" + key + "}" in template and key not in values:
            values[key] = rng.choice(options)
    return template.format(**values)


def words(text: str) -> int:
    return len(text.split())


def compose(rng: random.Random, head: str, slots: list[tuple[list[str], int]], vocab: dict, fixed: dict) -> str:
    """`head`, then for each (sentences, most) slot in order 1..most distinct sentences of that slot, filled."""
    parts = [head] if head else []
    for options, most in slots:
        for template in rng.sample(options, rng.randint(1, min(most, len(options)))):
            parts.append(fill(rng, template, vocab, fixed))
    return " ".join(parts)


def clause_slots(pools: list[list[str]]) -> list[tuple[list[str], int]]:
    """Opening sentence, up to three body sentences, one closing sentence."""
    return [(pools[0], 1), (pools[1], 3), (pools[2], 1)]


def generate_unique(rng: random.Random, makers: list[Callable], p: dict, n: int, length: tuple[int, int]) -> list[str]:
    """`n` distinct passages whose word count lies in `length`, cycling through the passage makers over pools `p`."""
    seen: set[str] = set()
    out: list[str] = []
    i = 0
    while len(out) < n:
        text = makers[i % len(makers)](rng, p)
        i += 1
        if text not in seen and length[0] <= words(text) <= length[1]:
            seen.add(text)
            out.append(text)
        if i > 50 * n:
            raise RuntimeError(f"{p['group']} pools too narrow to produce {n} distinct passages")
    return out


# ============================================================== legal vocabulary

PARTY_PAIRS = [
    ("Licensor", "Licensee"),
    ("Supplier", "Customer"),
    ("Company", "Consultant"),
    ("Landlord", "Tenant"),
    ("Employer", "Employee"),
    ("Seller", "Buyer"),
    ("Disclosing Party", "Receiving Party"),
    ("Service Provider", "Client"),
    ("Lender", "Borrower"),
    ("Franchisor", "Franchisee"),
    ("Contractor", "Owner"),
    ("Distributor", "Manufacturer"),
]
COMPANY_A = [
    "Harrow",
    "Vane",
    "Kestrel",
    "Ashgrove",
    "Brightwater",
    "Calloway",
    "Dunmore",
    "Eastbridge",
    "Fairhaven",
    "Greystone",
    "Holloway",
    "Ironwood",
    "Juniper",
    "Larkspur",
    "Meridian",
    "Northgate",
    "Oakhurst",
    "Pemberton",
    "Quillon",
    "Redfern",
    "Saltmarsh",
    "Thornbury",
    "Wexford",
    "Yarrow",
]
COMPANY_B = [
    "Logistics",
    "Biotech",
    "Software",
    "Holdings",
    "Partners",
    "Analytics",
    "Manufacturing",
    "Capital",
    "Foods",
    "Energy",
    "Media",
    "Medical Devices",
    "Properties",
    "Systems",
]
COMPANY_SUFFIX = ["LLC", "Inc.", "Ltd.", "Corporation", "LLP", "GmbH", "S.A."]
JURISDICTIONS = [
    "the State of Delaware",
    "the State of New York",
    "England and Wales",
    "the Province of Ontario",
    "the State of California",
    "the Commonwealth of Massachusetts",
    "the State of Texas",
    "Scotland",
    "the State of Illinois",
    "New South Wales",
    "the Republic of Ireland",
]
COURTS_VENUE = [
    "the state and federal courts located in Wilmington, Delaware",
    "the courts of England and Wales sitting in London",
    "the state courts of New York County",
    "the Superior Court of Justice in Toronto",
    "the United States District Court for the Northern District of Illinois",
    "the Court of Session in Edinburgh",
    "the Supreme Court of New South Wales",
]
ARBITRAL = [
    "the American Arbitration Association under its Commercial Arbitration Rules",
    "the London Court of International Arbitration",
    "JAMS under its Comprehensive Arbitration Rules",
    "the International Chamber of Commerce",
    "the Singapore International Arbitration Centre",
]

LEGAL_VOCAB = {
    "days": ["five (5)", "ten (10)", "fifteen (15)", "thirty (30)", "forty-five (45)", "sixty (60)", "ninety (90)"],
    "years": ["one (1) year", "two (2) years", "three (3) years", "five (5) years", "seven (7) years"],
    "months": ["six (6) months", "twelve (12) months", "eighteen (18) months", "twenty-four (24) months"],
    "amount": ["$50,000", "$250,000", "$1,000,000", "$5,000,000", "£100,000", "£2,500,000", "€750,000"],
    "percent": ["one and one-half percent (1.5%)", "two percent (2%)", "five percent (5%)", "ten percent (10%)"],
    "jurisdiction": JURISDICTIONS,
    "venue": COURTS_VENUE,
    "arbitral": ARBITRAL,
    "losses": [
        "losses, damages, liabilities, costs and expenses, including reasonable attorneys' fees",
        "claims, demands, judgments, settlements, fines and penalties",
        "third-party claims arising out of bodily injury, death or damage to tangible property",
        "any and all liabilities and reasonable legal fees",
    ],
    "breach": [
        "material breach of any representation, warranty or covenant in this Agreement",
        "gross negligence or wilful misconduct",
        "violation of applicable law",
        "infringement or misappropriation of any intellectual property right",
        "failure to pay any undisputed amount when due",
    ],
    "confidential": [
        "business plans, customer lists, pricing, source code, formulas and trade secrets",
        "technical data, know-how, product roadmaps and financial information",
        "personal data, supplier terms and unpublished research results",
        "designs, specifications, marketing strategies and the terms of this Agreement",
    ],
    "fm_events": [
        "acts of God, flood, fire, earthquake or epidemic",
        "war, terrorism, riot, embargo or acts of civil or military authority",
        "strikes or labour disputes (other than those of the affected party's own workforce)",
        "failure of public utilities, internet outages or pandemic-related government orders",
    ],
    "deliverable": [
        "the Software",
        "the Services",
        "the Products",
        "the Deliverables",
        "the Premises",
        "the Licensed Materials",
        "the Equipment",
    ],
    "notice_method": [
        "by hand, by registered mail with return receipt requested, or by a nationally recognised courier",
        "by email with confirmation of transmission, followed by a copy sent by first-class post",
        "in writing delivered personally or by prepaid certified mail",
    ],
}

CLAUSES: dict[str, list[list[str]]] = {
    "Indemnification": [
        [
            "{B} shall indemnify, defend and hold harmless {A} and its officers, directors, employees and agents from and against all {losses} arising out of or relating to {B}'s {breach}.",
            'Each party (the "Indemnifying Party") shall defend and indemnify the other party against all {losses} to the extent caused by the Indemnifying Party\'s {breach}.',
        ],
        [
            "The indemnified party shall give prompt written notice of any claim, provided that a failure to give notice shall relieve the Indemnifying Party of its obligations only to the extent it is materially prejudiced thereby.",
            "The Indemnifying Party shall have sole control of the defence and settlement of the claim, provided that it shall not settle any claim that imposes an admission of fault on {A} without {A}'s prior written consent.",
            "{A} may participate in the defence with counsel of its own choosing at its own expense.",
            "The obligations in this Section shall not apply to the extent a claim results from the indemnified party's own {breach}.",
            "Indemnification under this Section is in addition to, and not in lieu of, any other remedy available at law or in equity.",
        ],
        [
            "This Section shall survive the expiration or termination of this Agreement for a period of {years}.",
            "The indemnities in this Section constitute {B}'s sole liability, and {A}'s exclusive remedy, for third-party infringement claims.",
        ],
    ],
    "Confidentiality": [
        [
            "The {B} shall hold in strict confidence all Confidential Information of the {A}, including {confidential}, and shall not disclose it to any third party without prior written consent.",
            '"Confidential Information" means all non-public information disclosed by either party, whether orally or in writing, including {confidential}.',
        ],
        [
            "Confidential Information does not include information that is or becomes publicly available through no fault of the receiving party, or that was lawfully known to it before disclosure.",
            "The receiving party may disclose Confidential Information to the extent required by law or court order, provided it gives the disclosing party prompt notice and reasonable assistance in seeking a protective order.",
            "The receiving party shall restrict access to those employees and advisers who need to know the information for the purposes of this Agreement and who are bound by obligations no less protective than these.",
            "Upon written request, the receiving party shall promptly return or destroy all Confidential Information and certify such destruction in writing.",
            "The receiving party shall protect Confidential Information using at least the same degree of care it uses for its own confidential information, and in no event less than reasonable care.",
        ],
        [
            "The obligations of confidentiality shall continue for {years} after termination, and for trade secrets for so long as they remain trade secrets under applicable law.",
            "The parties acknowledge that a breach of this Section may cause irreparable harm for which damages would be an inadequate remedy, and that the disclosing party may seek injunctive relief without posting a bond.",
        ],
    ],
    "Termination": [
        [
            "Either party may terminate this Agreement for convenience upon {days} days' prior written notice to the other party.",
            "Either party may terminate this Agreement immediately by written notice if the other party commits a material breach and fails to cure such breach within {days} days after receiving notice describing it.",
        ],
        [
            "Either party may terminate this Agreement if the other party becomes insolvent, makes a general assignment for the benefit of creditors, or has a receiver or administrator appointed over its assets.",
            "Upon termination, {B} shall cease all use of {deliverable} and pay all fees accrued through the effective date of termination.",
            "Termination shall not affect any rights or liabilities that accrued before the effective date of termination.",
            "If {A} terminates for {B}'s breach, {A} shall be entitled to a pro rata refund of any prepaid fees for the unexpired portion of the term.",
            "Within {days} days after termination, each party shall return all property of the other party in its possession.",
        ],
        [
            "Sections relating to confidentiality, indemnification, limitation of liability and governing law shall survive any termination or expiration of this Agreement.",
            "The rights of termination in this Section are in addition to any other rights and remedies provided by law.",
        ],
    ],
    "Governing Law and Jurisdiction": [
        [
            "This Agreement and any dispute or claim arising out of it shall be governed by and construed in accordance with the laws of {jurisdiction}, without regard to its conflict of laws principles.",
            "The validity, interpretation and performance of this Agreement shall be governed by the laws of {jurisdiction}.",
        ],
        [
            "Each party irrevocably submits to the exclusive jurisdiction of {venue} for the resolution of any dispute.",
            "The United Nations Convention on Contracts for the International Sale of Goods shall not apply to this Agreement.",
            "Each party waives any objection to venue in such courts and any claim that such courts are an inconvenient forum.",
            "Nothing in this Section shall prevent a party from seeking interim or injunctive relief in any court of competent jurisdiction.",
        ],
        [
            "EACH PARTY KNOWINGLY AND VOLUNTARILY WAIVES ANY RIGHT TO A TRIAL BY JURY IN ANY ACTION ARISING OUT OF THIS AGREEMENT.",
            "Process may be served on either party in the manner provided for notices in this Agreement.",
        ],
    ],
    "Force Majeure": [
        [
            'Neither party shall be liable for any failure or delay in performance caused by events beyond its reasonable control, including {fm_events} (each a "Force Majeure Event").',
            "A party whose performance is prevented or delayed by a Force Majeure Event, including {fm_events}, shall be excused for the duration of that event.",
        ],
        [
            "The affected party shall notify the other party within {days} days of the onset of the Force Majeure Event and use commercially reasonable efforts to mitigate its effects.",
            "A Force Majeure Event shall not excuse any obligation to pay money that was due before the event occurred.",
            "The time for performance shall be extended by a period equal to the duration of the Force Majeure Event.",
        ],
        [
            "If a Force Majeure Event continues for more than {days} days, either party may terminate this Agreement on written notice without liability.",
            "Lack of funds or changes in market conditions shall not constitute a Force Majeure Event.",
        ],
    ],
    "Limitation of Liability": [
        [
            "IN NO EVENT SHALL EITHER PARTY BE LIABLE FOR ANY INDIRECT, INCIDENTAL, SPECIAL, CONSEQUENTIAL OR PUNITIVE DAMAGES, INCLUDING LOST PROFITS OR LOSS OF DATA, EVEN IF ADVISED OF THE POSSIBILITY OF SUCH DAMAGES.",
            "Except for liability that cannot be limited by law, neither party shall be liable for loss of profit, revenue, goodwill or anticipated savings.",
        ],
        [
            "Each party's aggregate liability arising out of this Agreement shall not exceed the fees paid by {B} in the {months} preceding the event giving rise to the claim.",
            "The total liability of {A} under this Agreement shall in no event exceed {amount}.",
            "The limitations in this Section shall not apply to a party's indemnification obligations, breach of confidentiality, or {breach}.",
            "The parties agree that these limitations reflect a reasonable allocation of risk and form an essential basis of the bargain.",
        ],
        [
            "Nothing in this Agreement limits liability for death or personal injury caused by negligence, or for fraud or fraudulent misrepresentation.",
            "Any claim under this Agreement must be brought within {years} after the cause of action accrues.",
        ],
    ],
    "Payment Terms": [
        [
            "{B} shall pay all undisputed invoices within {days} days of the invoice date, in the currency stated in the applicable order form.",
            "Fees for {deliverable} are set out in Schedule A and shall be invoiced monthly in arrears.",
        ],
        [
            "Late payments shall bear interest at {percent} per month or the maximum rate permitted by law, whichever is lower.",
            "{B} shall notify {A} in writing of any disputed amount within {days} days, stating the reasons in reasonable detail, and the parties shall negotiate in good faith to resolve the dispute.",
            "All fees are exclusive of value added tax, sales tax and similar levies, which {B} shall pay in addition.",
            "If any amount remains unpaid for more than {days} days after its due date, {A} may suspend performance on {days} days' written notice.",
            "{A} may increase the fees once per contract year by no more than {percent}, on written notice before the renewal date.",
        ],
        [
            "Payment shall be made by electronic funds transfer to the account designated by {A}.",
            "No payment shall be deemed acceptance of defective work or a waiver of any claim.",
        ],
    ],
    "Warranties": [
        [
            "{A} warrants that {deliverable} will perform materially in accordance with the Documentation for a period of {days} days after delivery.",
            "Each party represents and warrants that it has full corporate power and authority to enter into and perform this Agreement.",
        ],
        [
            "{A} warrants that the Services will be performed in a professional and workmanlike manner consistent with generally accepted industry standards.",
            "{B}'s sole remedy for breach of this warranty shall be the repair or replacement of the non-conforming item or, if neither is commercially practicable, a refund of the fees paid for it.",
            "{A} warrants that {deliverable} will not, to its knowledge, infringe any patent, copyright or trade secret of a third party.",
            "The warranty shall not apply to defects caused by misuse, unauthorised modification, or use with equipment not supplied by {A}.",
        ],
        [
            "EXCEPT AS EXPRESSLY SET OUT IN THIS AGREEMENT, ALL OTHER WARRANTIES, WHETHER EXPRESS OR IMPLIED, INCLUDING WARRANTIES OF MERCHANTABILITY AND FITNESS FOR A PARTICULAR PURPOSE, ARE DISCLAIMED.",
            "No oral or written statement by any employee of {A} shall create any warranty not contained in this Agreement.",
        ],
    ],
    "Non-Competition and Non-Solicitation": [
        [
            "During the term and for {months} thereafter, the {B} shall not, directly or indirectly, engage in any business that competes with the {A} within the Territory.",
            "For a period of {months} following termination, neither party shall solicit for employment any employee of the other party with whom it had material contact.",
        ],
        [
            "The restrictions in this Section are reasonable in scope and duration and are necessary to protect the {A}'s legitimate business interests, including its goodwill and Confidential Information.",
            "General advertisements not targeted at the other party's personnel shall not breach this Section.",
            "If a court finds any restriction unenforceable, the court may modify it to the minimum extent necessary to make it enforceable.",
            "The {B} shall not induce any customer or supplier of the {A} to terminate or adversely modify its relationship with the {A}.",
        ],
        [
            "The {B} acknowledges that it has received adequate consideration for the covenants in this Section.",
            "Any breach of this Section shall entitle the {A} to injunctive relief in addition to damages.",
        ],
    ],
    "Dispute Resolution": [
        [
            "Any dispute arising out of or in connection with this Agreement shall first be referred to senior executives of each party, who shall meet within {days} days to attempt to resolve it in good faith.",
            "The parties shall attempt to settle any dispute by mediation before commencing arbitration or litigation.",
        ],
        [
            "If the dispute is not resolved within {days} days, it shall be finally settled by binding arbitration administered by {arbitral}.",
            "The tribunal shall consist of a single arbitrator, and the seat of arbitration shall be the capital of {jurisdiction}.",
            "The arbitration shall be conducted in English, and the award shall be final and binding and may be entered in any court having jurisdiction.",
            "Each party shall bear its own costs of the arbitration, and the fees of the arbitrator shall be shared equally unless the award provides otherwise.",
            "The existence and content of the arbitral proceedings shall be treated as Confidential Information.",
        ],
        [
            "Nothing in this Section shall prevent either party from seeking urgent injunctive relief from a court of competent jurisdiction.",
            "Pending resolution of any dispute, the parties shall continue to perform their obligations under this Agreement.",
        ],
    ],
    "Assignment": [
        [
            "Neither party may assign or transfer this Agreement, in whole or in part, without the prior written consent of the other party, which shall not be unreasonably withheld.",
            "The {B} shall not assign, delegate or subcontract any of its rights or obligations without the {A}'s prior written consent.",
        ],
        [
            "Either party may assign this Agreement without consent to an affiliate or to a successor in connection with a merger, acquisition or sale of all or substantially all of its assets.",
            "Any purported assignment in violation of this Section shall be null and void.",
            "A change of control of the {B} shall be deemed an assignment for the purposes of this Section.",
        ],
        [
            "This Agreement shall bind and benefit the parties and their respective permitted successors and assigns.",
            "The assigning party shall give written notice of any permitted assignment within {days} days after it takes effect.",
        ],
    ],
    "Intellectual Property": [
        [
            "All right, title and interest in and to {deliverable}, including all intellectual property rights therein, shall remain with the {A}.",
            "The {B} hereby assigns to the {A} all right, title and interest in any work product created in the performance of this Agreement, and agrees that such work is a work made for hire to the extent permitted by law.",
        ],
        [
            "Subject to the terms of this Agreement, the {A} grants the {B} a non-exclusive, non-transferable, revocable licence to use {deliverable} solely for its internal business purposes during the term.",
            "The {B} shall not reverse engineer, decompile or disassemble {deliverable}, except to the extent expressly permitted by applicable law.",
            "Each party retains ownership of its pre-existing intellectual property, and no licence is granted by implication or estoppel.",
            "The {B} shall execute any documents reasonably requested to perfect the {A}'s rights under this Section.",
        ],
        [
            "Any feedback provided by the {B} may be used by the {A} without restriction or compensation.",
            "All rights not expressly granted in this Agreement are reserved by the {A}.",
        ],
    ],
    "Notices": [
        [
            "All notices under this Agreement shall be in writing and delivered {notice_method} to the address set out on the signature page.",
            "Any notice required or permitted under this Agreement shall be given {notice_method}.",
        ],
        [
            "Notices shall be deemed received on the date of delivery if delivered personally, or {days} days after dispatch if sent by post.",
            "Either party may change its notice address by giving notice to the other party in accordance with this Section.",
            "A copy of any notice of breach or termination sent to the {B} shall also be sent to its legal department.",
        ],
        [
            "Notices sent by email shall be effective only if the sender does not receive an automated message indicating failed delivery.",
            "Routine operational communications may be given by email without complying with this Section.",
        ],
    ],
    "Severability and Entire Agreement": [
        [
            "If any provision of this Agreement is held invalid or unenforceable, that provision shall be enforced to the maximum extent permissible and the remaining provisions shall continue in full force and effect.",
            "This Agreement, together with its Schedules, constitutes the entire agreement between the parties and supersedes all prior negotiations, representations and agreements relating to its subject matter.",
        ],
        [
            "No amendment to this Agreement shall be effective unless it is in writing and signed by authorised representatives of both parties.",
            "No failure or delay by either party in exercising any right shall operate as a waiver of that right.",
            "In the event of conflict between the body of this Agreement and any Schedule, the body of this Agreement shall prevail.",
            "Each party acknowledges that it has not relied on any statement, promise or representation not expressly set out in this Agreement.",
        ],
        [
            "This Agreement may be executed in counterparts, each of which shall be deemed an original, and signatures delivered electronically shall be binding.",
            "Headings are for convenience only and shall not affect the interpretation of this Agreement.",
        ],
    ],
}

STATUTE_TOPICS = {
    "Security deposits": [
        "A landlord may not demand a security deposit exceeding the equivalent of {n_months} months' rent.",
        "Within {days_plain} days after the tenancy ends, the landlord shall return the deposit together with an itemised statement of any deductions.",
        "A landlord who fails to comply with subsection (b) forfeits the right to retain any portion of the deposit and is liable for twice the amount wrongfully withheld.",
        "Deductions are limited to unpaid rent and the reasonable cost of repairing damage beyond ordinary wear and tear.",
        "The deposit shall be held in a separate interest-bearing account at a financial institution located in this State.",
    ],
    "Data breach notification": [
        "A person that owns or licenses computerised data containing personal information shall notify each affected resident of any breach of the security of the system.",
        "Notification shall be made in the most expedient time possible and without unreasonable delay, and in no case later than {days_plain} days after discovery of the breach.",
        "If more than {count} residents are affected, the person shall also notify the Attorney General and the consumer reporting agencies.",
        "Notification may be delayed if a law enforcement agency determines that it would impede a criminal investigation.",
        "For purposes of this section, \"personal information\" means an individual's name in combination with a social security number, driver's licence number, or financial account number together with any required access code.",
        "A violation of this section constitutes an unfair or deceptive trade practice, and the Attorney General may bring an action for civil penalties of up to {fine} per violation.",
    ],
    "Limitation of actions": [
        "An action upon a written contract shall be commenced within {n_years} years from the date on which the right to sue arose.",
        "An action for injury to the person caused by negligence shall be commenced within {n_years_short} years.",
        "If the person entitled to bring an action is a minor at the time the cause of action accrues, the period of limitation is tolled until the person reaches the age of majority.",
        "In an action based on fraud, the cause of action does not accrue until the aggrieved party discovers, or in the exercise of reasonable diligence should have discovered, the facts constituting the fraud.",
        "A written acknowledgment of the debt signed by the party to be charged restarts the period of limitation.",
    ],
    "Consumer protection": [
        "Unfair methods of competition and unfair or deceptive acts or practices in the conduct of any trade or commerce are hereby declared unlawful.",
        "A consumer who suffers an ascertainable loss of money or property as a result of a violation may recover actual damages or {fine_small}, whichever is greater.",
        "The court may award treble damages where the violation was wilful or knowing, together with reasonable attorney's fees and costs.",
        "A seller shall disclose in writing the total price, including all mandatory fees, before the consumer becomes obligated to pay.",
        "Any waiver by a consumer of the provisions of this chapter is contrary to public policy and void.",
    ],
    "Mechanics' liens": [
        "Any person who furnishes labour or materials for the improvement of real property at the request of the owner shall have a lien upon the property for the unpaid value thereof.",
        "A claim of lien shall be recorded in the office of the county recorder within {days_plain} days after completion of the work.",
        "The lien claimant shall serve a copy of the claim on the owner by certified mail within {days_short} days after recording.",
        "An action to foreclose the lien shall be commenced within {n_months} months after recording, or the lien expires.",
        "The owner may release the property from the lien by recording a surety bond in an amount equal to one and one-half times the claim.",
    ],
    "Public records": [
        "Every person has the right to inspect and copy any public record of a public body, except as otherwise provided by law.",
        "A public body shall respond to a written request within {days_short} business days, either by producing the records or by stating the specific exemption relied upon.",
        "Records whose disclosure would constitute an unwarranted invasion of personal privacy are exempt from disclosure.",
        "A person denied access may seek review in the circuit court, which shall determine the matter de novo.",
        "A public body may charge a reasonable fee not exceeding the actual cost of duplication.",
    ],
    "Employment leave": [
        "An eligible employee is entitled to a total of {weeks} workweeks of unpaid, job-protected leave during any twelve-month period.",
        "Leave may be taken for the birth of a child, the placement of a child for adoption, or a serious health condition of the employee or a family member.",
        "Upon return from leave, the employee shall be restored to the same position or to an equivalent position with equivalent pay and benefits.",
        "An employer shall maintain the employee's group health coverage during the leave on the same terms as if the employee had continued to work.",
        "An employer may require that a request for leave be supported by a certification issued by a health care provider.",
        "It is unlawful for an employer to interfere with, restrain, or deny the exercise of any right provided under this section.",
    ],
    "Electronic signatures": [
        "A record or signature may not be denied legal effect or enforceability solely because it is in electronic form.",
        "If a law requires a record to be in writing, an electronic record satisfies the law.",
        "An electronic signature is attributable to a person if it was the act of the person, which may be shown in any manner, including by the efficacy of a security procedure.",
        "This section applies only to transactions between parties each of which has agreed to conduct transactions by electronic means.",
        "This section does not apply to wills, codicils, or testamentary trusts.",
    ],
}
STATUTE_VOCAB = {
    "n_months": ["two", "three", "six"],
    "days_plain": ["14", "21", "30", "45", "60", "90"],
    "days_short": ["5", "7", "10", "15"],
    "count": ["500", "1,000", "5,000"],
    "fine": ["$5,000", "$10,000", "$25,000"],
    "fine_small": ["$250", "$500", "$1,000"],
    "n_years": ["four", "five", "six", "ten"],
    "n_years_short": ["two", "three"],
    "weeks": ["twelve", "sixteen"],
}
STATUTE_OPENERS = ["(a)", "(b)", "(c)", "(d)", "(e)", "(f)"]
CODES = ["Civ. Code", "Gen. Stat.", "Rev. Code", "Bus. & Prof. Code", "Comp. Laws", "Stat. Ann."]

CASE_VOCAB = {
    "surname": [
        "Alvarez",
        "Brennan",
        "Chatterjee",
        "Delacroix",
        "Eriksen",
        "Fairbanks",
        "Gallagher",
        "Hoffmann",
        "Ishikawa",
        "Jablonski",
        "Kowalczyk",
        "Lindqvist",
        "Mbeki",
        "Novak",
        "O'Rourke",
        "Petrov",
        "Quintero",
        "Rasmussen",
        "Sandoval",
        "Tanaka",
        "Underwood",
        "Varga",
        "Whitfield",
        "Zimmerman",
    ],
    "court": [
        "Court of Appeals for the Ninth Circuit",
        "Supreme Court of Delaware",
        "Court of Appeal (Civil Division)",
        "Appellate Division, First Department",
        "Ontario Court of Appeal",
        "Supreme Court of Illinois",
        "High Court, Queen's Bench Division",
        "Texas Court of Appeals",
    ],
    "year": [str(y) for y in range(1998, 2024)],
    "procedural_for_p": [
        "entered judgment on a jury verdict for the plaintiff",
        "denied the defendant's motion for summary judgment",
        "entered judgment for the plaintiff after a bench trial",
        "struck out the defendant's defence",
    ],
    "procedural_for_d": [
        "granted summary judgment for the defendant",
        "dismissed the complaint for failure to state a claim",
        "granted the defendant's motion to compel arbitration",
        "entered judgment for the defendant after a bench trial",
    ],
    "damages": ["$180,000", "$1.2 million", "$46,500", "$3.75 million", "£620,000", "$275,000"],
}


CASE_SCENARIOS = [
    (
        "software reseller",
        "d",
        "breach of contract",
        "The defendant, a cloud hosting provider, lost the plaintiff's customer data during a migration, and the plaintiff claimed lost profits far exceeding the fees paid.",
        "the limitation of liability clause was enforceable and capped recovery at twelve months' fees",
        "The court emphasised that commercial parties are presumed to allocate risk deliberately, and courts should not rewrite a bargain simply because it has proved unfavourable.",
    ),
    (
        "payments company",
        "d",
        "breach of a restrictive covenant",
        "After resigning, the employee joined a competitor and the former employer sought to enforce a two-year nationwide non-compete.",
        "the non-compete covenant was unreasonable in geographic scope and therefore unenforceable as written",
        "The court reasoned that a restraint must be no wider than necessary to protect legitimate interests, and the employee had worked in a single regional market.",
    ),
    (
        "commercial landlord",
        "p",
        "recovery of unpaid rent under a commercial lease",
        "The tenant stopped paying rent during a government-ordered closure and relied on the force majeure clause in the lease.",
        "the closure order did not fall within the force majeure clause because the clause listed only natural disasters",
        "Relying on the doctrine of ejusdem generis, the court read the general words of the clause in light of the specific events listed before them.",
    ),
    (
        "buyer of a family business",
        "p",
        "fraud and negligent misrepresentation",
        "The buyer alleged that the seller's managing director had overstated the order book during negotiations for the sale of the business.",
        "the entire agreement clause barred reliance on pre-contractual statements but not a claim for fraud",
        "The court held that a party cannot contract out of liability for its own fraud, as a matter of public policy.",
    ),
    (
        "property developer",
        "d",
        "recovery under a contractual indemnity",
        "A worker injured on a building site sued the site owner, who then sought to recover its liability from the contractor under an indemnity, although the injury was caused by the owner's own negligence.",
        "the indemnity did not extend to the indemnitee's own negligence absent clear and unequivocal language",
        "The court noted that exculpatory and indemnity provisions are construed strictly against the party seeking to rely on them.",
    ),
    (
        "regional distributor",
        "p",
        "breach of contract and the implied covenant of good faith",
        "The distributor was terminated for convenience one week before a large commission fell due.",
        "the termination for convenience clause did not permit termination in bad faith to avoid an accrued commission",
        "The court found that the implied covenant prevents a party from exercising a discretionary power to deprive the other of the fruits of the contract.",
    ),
    (
        "property investor",
        "p",
        "specific performance",
        "The parties agreed the sale of a warehouse by an exchange of emails, each ending with the sender's typed name, and the seller later refused to complete.",
        "the email exchange satisfied the statute of frauds because both parties typed their names at the end of their messages",
        "Applying the jurisdiction's electronic signatures statute, the court held that a typed name adopted with intent to sign is a signature.",
    ),
    (
        "software licensor",
        "p",
        "misappropriation of trade secrets",
        "A former licensee continued to use the licensor's customer list and pricing formulas after the licence ended.",
        "the confidentiality obligation survived termination even though the agreement was silent on survival",
        "The court inferred from the nature of the information that the parties intended the obligation to continue, since it would otherwise have been worthless.",
    ),
    (
        "property developer",
        "d",
        "recovery of liquidated damages",
        "The developer's construction contract with the builder provided for a fixed sum per day of delay that exceeded the entire contract price within a month.",
        "the liquidated damages provision was an unenforceable penalty because it bore no relation to anticipated loss",
        "The court asked whether the sum was out of all proportion to any legitimate interest of the innocent party and concluded that it was.",
    ),
    (
        "franchisee",
        "d",
        "tortious interference and unfair competition",
        "The franchisee sued the franchisor in court although the franchise agreement required arbitration of all disputes arising out of or relating to it.",
        "the arbitration clause was broad enough to cover tort claims arising from the same relationship",
        "The majority observed that public policy favours the enforcement of arbitration agreements, and that any doubt about scope should be resolved in favour of arbitration.",
    ),
    (
        "landlord company",
        "d",
        "arrears of rent",
        "The landlord orally promised to accept reduced rent while the tenant repaired flood damage, then demanded the arrears.",
        "the landlord was estopped from claiming the full rent for the period in which the tenant relied on the promise",
        "The court found a clear promise, reasonable reliance and detriment, and held that it would be inequitable to allow the landlord to resile from the promise.",
    ),
    (
        "manufacturer",
        "p",
        "breach of warranty",
        "The buyer's production line failed because the supplied control units overheated, and the seller relied on a warranty disclaimer printed on the back of its invoices.",
        "the disclaimer was not part of the contract because it was first communicated after the contract had been formed",
        "The court applied the rule that terms must be brought to the other party's attention before or at the time of contracting.",
    ),
]
CASE_EXTRA = [
    "The parties had negotiated the agreement over several months, each represented by counsel.",
    "The written agreement ran for a fixed term of {years_contract} and was governed by the law of the forum.",
    "Damages of {damages} were claimed, together with interest and costs.",
    "The appeal was heard together with a related appeal raising the same point of construction.",
    "A dissenting judge would have remanded for further fact-finding on whether the parties had equal bargaining power.",
    "The court added that its decision turned on the particular wording of the clause and laid down no general rule.",
]


# ============================================================== medical vocabulary

DRUGS = [
    # name, class, uses, common side effects, do not take if, typical adult dose, extra advice
    (
        "Metformin",
        "a biguanide",
        "type 2 diabetes mellitus, to lower blood glucose",
        "nausea, diarrhoea, abdominal discomfort and a metallic taste",
        "you have severe kidney impairment or metabolic acidosis",
        "500 mg twice daily with meals, increased gradually",
        "Stop taking it and seek care if you develop unusual muscle pain, rapid breathing or severe weakness, which may signal lactic acidosis.",
    ),
    (
        "Lisinopril",
        "an ACE inhibitor",
        "high blood pressure, heart failure and protection of the kidneys in diabetes",
        "dry cough, dizziness, headache and raised potassium",
        "you have had angioedema with an ACE inhibitor or are pregnant",
        "10 mg once daily",
        "Your kidney function and potassium should be checked one to two weeks after starting.",
    ),
    (
        "Atorvastatin",
        "a statin (HMG-CoA reductase inhibitor)",
        "high cholesterol and prevention of heart attack and stroke",
        "muscle aches, constipation and mildly raised liver enzymes",
        "you have active liver disease or are pregnant or breastfeeding",
        "10 to 80 mg once daily",
        "Report unexplained muscle pain, tenderness or weakness, especially with fever.",
    ),
    (
        "Amoxicillin",
        "a penicillin antibiotic",
        "bacterial infections such as otitis media, sinusitis and community-acquired pneumonia",
        "diarrhoea, nausea and skin rash",
        "you are allergic to penicillin",
        "500 mg three times daily for five to seven days",
        "Finish the full course even if you feel better.",
    ),
    (
        "Warfarin",
        "a vitamin K antagonist anticoagulant",
        "prevention and treatment of blood clots, including in atrial fibrillation",
        "bleeding, bruising and, rarely, skin necrosis",
        "you are actively bleeding or pregnant",
        "individually adjusted to the INR, commonly 2 to 10 mg daily",
        "Keep your intake of vitamin K-rich foods consistent and attend every INR check.",
    ),
    (
        "Apixaban",
        "a direct factor Xa inhibitor",
        "stroke prevention in atrial fibrillation and treatment of deep vein thrombosis",
        "bleeding, bruising and nausea",
        "you have active significant bleeding or a mechanical heart valve",
        "5 mg twice daily",
        "Do not stop it suddenly without medical advice, as this raises the risk of stroke.",
    ),
    (
        "Omeprazole",
        "a proton pump inhibitor",
        "gastro-oesophageal reflux disease, peptic ulcers and eradication of Helicobacter pylori",
        "headache, abdominal pain and diarrhoea",
        "you take rilpivirine",
        "20 mg once daily before breakfast",
        "Long-term use may lower magnesium and vitamin B12 levels.",
    ),
    (
        "Salbutamol",
        "a short-acting beta-2 agonist bronchodilator",
        "quick relief of wheeze and breathlessness in asthma and COPD",
        "tremor, palpitations and headache",
        "you are allergic to salbutamol",
        "one or two puffs of 100 micrograms as needed",
        "If you need it more than three times a week, your asthma may not be well controlled.",
    ),
    (
        "Sertraline",
        "a selective serotonin reuptake inhibitor (SSRI)",
        "depression, panic disorder and obsessive-compulsive disorder",
        "nausea, sleep disturbance, sweating and sexual dysfunction",
        "you take an MAO inhibitor or pimozide",
        "50 mg once daily",
        "It may take two to four weeks to feel the benefit; do not stop abruptly.",
    ),
    (
        "Levothyroxine",
        "a thyroid hormone",
        "hypothyroidism",
        "palpitations, insomnia and weight loss if the dose is too high",
        "you have untreated adrenal insufficiency or thyrotoxicosis",
        "about 1.6 micrograms per kilogram daily, adjusted to TSH",
        "Take it on an empty stomach, 30 to 60 minutes before breakfast, apart from calcium and iron.",
    ),
    (
        "Ibuprofen",
        "a non-steroidal anti-inflammatory drug (NSAID)",
        "pain, fever and inflammation",
        "indigestion, stomach ulcers and raised blood pressure",
        "you have a history of stomach bleeding, severe heart failure or are in the last trimester of pregnancy",
        "200 to 400 mg every six to eight hours with food",
        "Use the lowest effective dose for the shortest time.",
    ),
    (
        "Paracetamol",
        "an analgesic and antipyretic",
        "mild to moderate pain and fever",
        "rash, which is rare, and liver damage in overdose",
        "you have severe liver disease",
        "500 mg to 1 g every four to six hours, no more than 4 g in 24 hours",
        "Check other medicines for paracetamol to avoid accidental overdose.",
    ),
    (
        "Prednisolone",
        "a corticosteroid",
        "inflammatory conditions such as asthma exacerbations, rheumatoid arthritis and inflammatory bowel disease",
        "raised blood glucose, mood changes, increased appetite and insomnia",
        "you have a systemic infection not being treated",
        "5 to 60 mg once daily in the morning, depending on the condition",
        "After more than three weeks of treatment, the dose must be reduced gradually.",
    ),
    (
        "Furosemide",
        "a loop diuretic",
        "fluid overload in heart failure, oedema and some cases of hypertension",
        "frequent urination, low potassium, dehydration and dizziness",
        "you have anuria or severe sodium depletion",
        "20 to 80 mg once daily in the morning",
        "Weigh yourself daily and report a gain of more than 2 kg in three days.",
    ),
    (
        "Amlodipine",
        "a calcium channel blocker",
        "high blood pressure and angina",
        "ankle swelling, flushing and headache",
        "you have cardiogenic shock or severe aortic stenosis",
        "5 mg once daily",
        "Ankle swelling is common and not usually dangerous, but mention it to your doctor.",
    ),
    (
        "Insulin glargine",
        "a long-acting basal insulin",
        "type 1 and type 2 diabetes",
        "hypoglycaemia, weight gain and injection-site reactions",
        "you are having a hypoglycaemic episode",
        "10 units once daily at first, adjusted to fasting glucose",
        "Learn the signs of low blood sugar and always carry a source of fast-acting glucose.",
    ),
    (
        "Clopidogrel",
        "a P2Y12 antiplatelet agent",
        "prevention of heart attack and stroke after acute coronary syndrome or stent placement",
        "bleeding, bruising and diarrhoea",
        "you have active pathological bleeding",
        "75 mg once daily",
        "Tell your dentist or surgeon you take it before any procedure.",
    ),
    (
        "Doxycycline",
        "a tetracycline antibiotic",
        "respiratory infections, Lyme disease, acne and malaria prophylaxis",
        "photosensitivity, nausea and oesophageal irritation",
        "you are pregnant or the patient is a child under eight",
        "100 mg twice daily on the first day, then 100 mg daily",
        "Take it upright with a full glass of water and avoid strong sunlight.",
    ),
    (
        "Gabapentin",
        "an anticonvulsant",
        "neuropathic pain and partial seizures",
        "drowsiness, dizziness and peripheral oedema",
        "you are allergic to gabapentin",
        "300 mg at night, increased over several days",
        "Do not drive until you know how it affects you.",
    ),
    (
        "Morphine sulfate",
        "an opioid analgesic",
        "severe acute and chronic pain",
        "constipation, drowsiness, nausea and respiratory depression",
        "you have acute respiratory depression or paralytic ileus",
        "5 to 10 mg every four hours as needed, individually titrated",
        "Take a laxative while on regular morphine and never combine it with alcohol.",
    ),
    (
        "Ondansetron",
        "a 5-HT3 receptor antagonist antiemetic",
        "nausea and vomiting after chemotherapy or surgery",
        "headache, constipation and, rarely, QT prolongation",
        "you take apomorphine or have congenital long QT syndrome",
        "4 to 8 mg up to three times daily",
        "Tell your doctor about any heart rhythm problems.",
    ),
    (
        "Enoxaparin",
        "a low-molecular-weight heparin",
        "prevention and treatment of venous thromboembolism",
        "bleeding, bruising at the injection site and low platelets",
        "you have a history of heparin-induced thrombocytopenia",
        "40 mg subcutaneously once daily for prevention",
        "Rotate injection sites on the abdomen.",
    ),
    (
        "Bisoprolol",
        "a cardioselective beta blocker",
        "heart failure, angina and atrial fibrillation rate control",
        "tiredness, cold hands and a slow heart rate",
        "you have severe asthma, heart block or uncontrolled heart failure",
        "1.25 to 10 mg once daily",
        "Do not stop it suddenly, as angina may worsen.",
    ),
    (
        "Methotrexate",
        "a disease-modifying antirheumatic drug",
        "rheumatoid arthritis and psoriasis",
        "nausea, mouth ulcers, liver toxicity and low blood counts",
        "you are pregnant, breastfeeding or have significant liver disease",
        "7.5 to 25 mg once weekly, on the same day each week",
        "It is taken once a week, not daily; take folic acid as prescribed and attend regular blood tests.",
    ),
    (
        "Allopurinol",
        "a xanthine oxidase inhibitor",
        "prevention of gout and of uric acid kidney stones",
        "rash, gout flares when starting and nausea",
        "you have an acute gout attack that has not settled",
        "100 mg daily, increased gradually to 300 mg or more",
        "Stop it and seek help immediately if you develop a rash.",
    ),
    (
        "Cetirizine",
        "a second-generation antihistamine",
        "hay fever, allergic rhinitis and urticaria",
        "drowsiness, dry mouth and fatigue",
        "you have severe kidney disease without dose adjustment",
        "10 mg once daily",
        "Alcohol may increase drowsiness.",
    ),
    (
        "Tamsulosin",
        "an alpha-1 blocker",
        "urinary symptoms of benign prostatic hyperplasia",
        "dizziness on standing, abnormal ejaculation and nasal congestion",
        "you have a history of fainting on standing",
        "400 micrograms once daily after the same meal",
        "Tell your eye surgeon you take it before cataract surgery.",
    ),
    (
        "Nitrofurantoin",
        "a urinary antibacterial",
        "uncomplicated lower urinary tract infections",
        "nausea, brown urine and, rarely, lung reactions",
        "your kidney function is significantly reduced",
        "100 mg modified-release twice daily for three to five days",
        "Take it with food to reduce nausea.",
    ),
    (
        "Hydrochlorothiazide",
        "a thiazide diuretic",
        "high blood pressure and mild oedema",
        "low sodium, low potassium, raised uric acid and photosensitivity",
        "you have anuria or severe kidney failure",
        "12.5 to 25 mg once daily",
        "Have your blood salts checked periodically.",
    ),
    (
        "Fluticasone inhaler",
        "an inhaled corticosteroid",
        "long-term control of asthma",
        "hoarseness and oral thrush",
        "you are allergic to fluticasone",
        "100 to 250 micrograms twice daily",
        "Rinse your mouth after each use; it does not relieve an acute attack.",
    ),
]
FIRST = {
    "woman": [
        "Amelia",
        "Carmen",
        "Elena",
        "Grace",
        "Ingrid",
        "Keiko",
        "Marisol",
        "Olga",
        "Rosa",
        "Tamsin",
        "Wen",
        "Aisha",
    ],
    "man": [
        "Bashir",
        "Dmitri",
        "Farid",
        "Hiroshi",
        "Jamal",
        "Liam",
        "Nikhil",
        "Pedro",
        "Samuel",
        "Viktor",
        "Yusuf",
        "Tomasz",
    ],
}
MED_VOCAB = {
    "age": [str(a) for a in range(19, 93)],
    "sex": ["man", "woman"],
    "pmh": [
        "type 2 diabetes and hypertension",
        "COPD and a 40 pack-year smoking history",
        "chronic kidney disease stage 3",
        "ischaemic heart disease with a stent placed four years ago",
        "hypothyroidism",
        "rheumatoid arthritis on methotrexate",
        "well-controlled asthma",
        "osteoarthritis of both knees",
        "depression and anxiety",
        "hypertension and gout",
    ],
    "duration": ["two days", "three days", "four days", "one week", "ten days", "two weeks"],
    "sys": [str(v) for v in range(104, 168, 4)],
    "dia": [str(v) for v in range(62, 98, 3)],
    "history": [
        "No recent travel or sick contacts.",
        "Adherent to medications; no known drug allergies.",
        "Ex-smoker; drinks about ten units of alcohol a week.",
        "Never smoked; drinks alcohol rarely.",
        "Has had the seasonal influenza vaccine.",
    ],
    "living": [
        "Lives alone and is independent with activities of daily living.",
        "Lives with a daughter who helps with shopping.",
        "Lives with a partner in a ground-floor flat.",
    ],
    "followup": [
        "Safety-netting advice given; return if symptoms worsen.",
        "Patient understands and agrees with the plan.",
        "Follow up in the general practice clinic in one week.",
        "Repeat blood tests in five days.",
    ],
    "los": ["two", "three", "four", "five", "seven", "nine"],
    "generic_course": [
        "The patient was reviewed by physiotherapy and was mobilising independently before discharge.",
        "A brief episode of delirium on day two resolved with treatment of the underlying illness and good sleep hygiene.",
        "Medicines reconciliation was completed with the ward pharmacist.",
        "Observations were stable for 24 hours before discharge.",
    ],
}

# One clinical scenario per condition, so that the history, findings, tests and plan of a note agree.
# keys: dx, complaint, vitals (temp, hr, rr, spo2 choices), exam, tests, plan, course, meds
CONDITIONS = [
    dict(
        dx=["community-acquired pneumonia, CURB-65 score of 1", "right lower lobe pneumonia, CURB-65 score of 2"],
        complaint=["productive cough and fever", "fever, rigors and right-sided pleuritic chest pain"],
        vitals=(["38.3", "38.9", "39.2"], ["98", "104", "112"], ["22", "24", "26"], ["91", "93", "94"]),
        exam=[
            "Coarse crackles and bronchial breathing at the right base.",
            "Reduced air entry and dullness to percussion at the right base.",
        ],
        tests=[
            "White cell count 14.2 x10^9/L with neutrophilia and CRP 186 mg/L.",
            "Chest X-ray shows right lower lobe consolidation.",
            "Urea 7.9 mmol/L.",
        ],
        plan=[
            "Start amoxicillin 500 mg three times daily and clarithromycin, encourage oral fluids, and review in 48 hours.",
            "Admit for intravenous co-amoxiclav and oxygen to keep saturations at 94 to 98 percent; send blood and sputum cultures.",
        ],
        course=[
            "Oxygen was weaned to room air by day three and the CRP fell steadily.",
            "Blood cultures grew no organisms and antibiotics were switched to oral therapy on day two.",
        ],
        meds=[
            "amoxicillin 500 mg three times daily to complete seven days",
            "paracetamol 1 g four times daily as needed",
        ],
    ),
    dict(
        dx=["infective exacerbation of COPD"],
        complaint=[
            "increasing breathlessness and green sputum",
            "worsening wheeze and breathlessness on minimal exertion",
        ],
        vitals=(["37.4", "37.9", "38.1"], ["96", "102", "108"], ["24", "26", "28"], ["86", "88", "90"]),
        exam=[
            "Widespread expiratory wheeze with a prolonged expiratory phase.",
            "Pursed-lip breathing and use of accessory muscles.",
        ],
        tests=[
            "Arterial blood gas: pH 7.33, pCO2 6.9 kPa, pO2 7.8 kPa.",
            "Chest X-ray shows hyperinflation without consolidation.",
            "CRP 48 mg/L.",
        ],
        plan=[
            "Nebulised salbutamol and ipratropium, prednisolone 30 mg for five days, doxycycline, and controlled oxygen to saturations of 88 to 92 percent.",
            "Controlled oxygen, regular nebulisers, oral prednisolone and a repeat blood gas in one hour.",
        ],
        course=[
            "The patient improved with nebulisers and steroids and did not need non-invasive ventilation.",
            "Inhaler technique was checked and a pulmonary rehabilitation referral was made.",
        ],
        meds=[
            "prednisolone 30 mg once daily to complete five days",
            "doxycycline 100 mg once daily to complete five days",
        ],
    ),
    dict(
        dx=[
            "acute decompensated heart failure",
            "fluid overload secondary to heart failure with reduced ejection fraction",
        ],
        complaint=[
            "worsening breathlessness, orthopnoea and ankle swelling",
            "breathlessness at night and a weight gain of 4 kg",
        ],
        vitals=(["36.7", "36.9"], ["92", "98", "106"], ["22", "24"], ["92", "93", "95"]),
        exam=[
            "Raised jugular venous pressure, bibasal crackles and pitting oedema to the knees.",
            "A third heart sound and pitting oedema to the mid-shins bilaterally.",
        ],
        tests=[
            "NT-proBNP 4,820 ng/L.",
            "Chest X-ray shows upper lobe diversion and small bilateral effusions.",
            "Echocardiogram shows an ejection fraction of 30 percent.",
        ],
        plan=[
            "Intravenous furosemide 40 mg twice daily with daily weights, fluid balance chart and daily renal function.",
            "Start intravenous diuresis, restrict fluids to 1.5 litres a day and review the heart failure medicines.",
        ],
        course=[
            "The patient was diuresed with intravenous furosemide, losing 5.2 kg over the admission.",
            "Renal function remained stable during diuresis and bisoprolol was continued.",
        ],
        meds=["furosemide 40 mg once daily", "bisoprolol 2.5 mg once daily"],
    ),
    dict(
        dx=["atrial fibrillation with rapid ventricular response", "new-onset atrial fibrillation"],
        complaint=["intermittent palpitations and light-headedness", "a fast, irregular heartbeat since the morning"],
        vitals=(["36.8", "37.0"], ["128", "134", "142"], ["18", "20"], ["96", "97", "98"]),
        exam=[
            "Irregularly irregular pulse; heart sounds otherwise normal.",
            "Irregular pulse with no signs of heart failure.",
        ],
        tests=[
            "ECG shows atrial fibrillation with a ventricular rate of 136.",
            "TSH and electrolytes are within normal limits.",
            "Troponin is below the reference limit.",
        ],
        plan=[
            "Rate control with bisoprolol 2.5 mg daily; calculate the CHA2DS2-VASc score and discuss anticoagulation.",
            "Start bisoprolol, begin apixaban 5 mg twice daily given a CHA2DS2-VASc score of 3, and arrange an echocardiogram.",
        ],
        course=["Heart rate settled below 90 on oral bisoprolol.", "The patient reverted to sinus rhythm on day two."],
        meds=["apixaban 5 mg twice daily", "bisoprolol 2.5 mg once daily"],
    ),
    dict(
        dx=["deep vein thrombosis of the left leg", "provoked deep vein thrombosis after recent surgery"],
        complaint=["a painful, swollen left calf", "left leg swelling and pain on walking"],
        vitals=(["36.9", "37.3"], ["84", "90"], ["16", "18"], ["97", "98"]),
        exam=[
            "The left calf is 3 cm larger in circumference than the right and tender along the deep veins.",
            "Pitting oedema of the left leg to the knee.",
        ],
        tests=[
            "D-dimer is raised at 1.8 mg/L.",
            "Compression ultrasound confirms a popliteal deep vein thrombosis.",
            "Renal function and platelets are normal.",
        ],
        plan=[
            "Commence apixaban 10 mg twice daily for seven days, then 5 mg twice daily for three months.",
            "Start anticoagulation with apixaban and review the duration of treatment at three months.",
        ],
        course=[
            "The patient was managed on the same-day emergency care pathway.",
            "Anticoagulation was started and the patient was counselled about bleeding risk.",
        ],
        meds=["apixaban 5 mg twice daily for three months"],
    ),
    dict(
        dx=["cellulitis of the left lower leg"],
        complaint=["a red, hot and painful left shin", "spreading redness of the left leg"],
        vitals=(["37.9", "38.2"], ["94", "100"], ["18", "20"], ["96", "97"]),
        exam=[
            "An area of erythema 12 cm across on the left shin, warm and tender, with no fluctuance.",
            "Erythema and swelling of the left lower leg with a cracked web space between the toes.",
        ],
        tests=["White cell count 12.8 x10^9/L and CRP 96 mg/L.", "Blood cultures taken before antibiotics."],
        plan=[
            "Mark the margin of erythema, start flucloxacillin 1 g four times daily and elevate the limb.",
            "Start clarithromycin as the patient reports a penicillin allergy, mark the margin and review in 48 hours.",
        ],
        course=[
            "The erythema receded within the marked margin after 48 hours of intravenous antibiotics.",
            "Antibiotics were switched to the oral route on day three.",
        ],
        meds=["flucloxacillin 1 g four times daily to complete seven days"],
    ),
    dict(
        dx=["uncomplicated lower urinary tract infection", "lower urinary tract infection"],
        complaint=["dysuria and urinary frequency", "burning on passing urine and suprapubic discomfort"],
        vitals=(["36.9", "37.4"], ["78", "84"], ["14", "16"], ["98", "99"]),
        exam=["Mild suprapubic tenderness; no renal angle tenderness.", "Abdomen soft, mild suprapubic tenderness."],
        tests=["Urine dipstick positive for leucocytes and nitrites.", "Urine sent for culture and sensitivity."],
        plan=[
            "Prescribe nitrofurantoin 100 mg modified-release twice daily for three days and send urine for culture.",
            "Nitrofurantoin for three days, plenty of fluids, and paracetamol for discomfort.",
        ],
        course=["Symptoms settled on oral antibiotics."],
        meds=["nitrofurantoin 100 mg twice daily to complete three days"],
    ),
    dict(
        dx=["acute uncomplicated diverticulitis"],
        complaint=["left lower quadrant abdominal pain and loose stools", "constant left-sided lower abdominal pain"],
        vitals=(["37.8", "38.1"], ["92", "96"], ["18", "20"], ["97", "98"]),
        exam=[
            "The abdomen is soft with tenderness in the left lower quadrant and no guarding.",
            "Localised left iliac fossa tenderness without peritonism.",
        ],
        tests=[
            "CRP 112 mg/L.",
            "CT abdomen shows uncomplicated sigmoid diverticulitis with no abscess or perforation.",
        ],
        plan=[
            "Clear fluids, analgesia and oral co-amoxiclav, with review if the pain worsens.",
            "Admit for intravenous antibiotics, analgesia and fluids.",
        ],
        course=[
            "The pain settled and the patient was eating normally by day three.",
            "Inflammatory markers fell and antibiotics were switched to the oral route.",
        ],
        meds=["co-amoxiclav 625 mg three times daily to complete seven days"],
    ),
    dict(
        dx=["acute kidney injury, likely prerenal", "acute kidney injury secondary to dehydration"],
        complaint=[
            "vomiting and diarrhoea with reduced urine output",
            "dizziness on standing after several days of diarrhoea",
        ],
        vitals=(["37.1", "37.3"], ["104", "110"], ["18", "20"], ["97", "98"]),
        exam=[
            "Mucous membranes are dry and capillary refill is 3 seconds.",
            "Postural drop in blood pressure of 25 mmHg.",
        ],
        tests=[
            "Creatinine 212 micromol/L, up from a baseline of 96.",
            "Potassium 5.6 mmol/L and sodium 133 mmol/L.",
            "Urinalysis is bland.",
        ],
        plan=[
            "Hold metformin, lisinopril and ibuprofen, give intravenous fluids and recheck renal function in the morning.",
            "Intravenous fluids, strict fluid balance and suspension of nephrotoxic medicines.",
        ],
        course=[
            "Renal function returned to baseline after 48 hours of intravenous fluids.",
            "Lisinopril was restarted once creatinine was back to baseline.",
        ],
        meds=["lisinopril 10 mg once daily, restarted at discharge"],
    ),
    dict(
        dx=["poorly controlled type 2 diabetes"],
        complaint=["thirst, frequent urination and tiredness", "polyuria and polydipsia with blurred vision"],
        vitals=(["36.7", "36.9"], ["76", "82"], ["14", "16"], ["98", "99"]),
        exam=[
            "Body mass index 34; foot examination shows intact sensation and palpable pulses.",
            "No signs of dehydration; feet normal.",
        ],
        tests=["HbA1c 86 mmol/mol.", "Random glucose 18.4 mmol/L with no ketones.", "eGFR 72 mL/min/1.73 m2."],
        plan=[
            "Increase metformin to 1 g twice daily, start a second agent, and refer for structured diabetes education.",
            "Start insulin glargine 10 units at night and increase by 2 units every three days until fasting glucose is below 7 mmol/L.",
        ],
        course=["Insulin was started with diabetes nurse education and the patient demonstrated safe self-injection."],
        meds=["insulin glargine 14 units at night", "metformin 1 g twice daily"],
    ),
    dict(
        dx=["mechanical low back pain with left-sided sciatica"],
        complaint=[
            "low back pain radiating down the left leg",
            "back pain after lifting, with tingling in the left foot",
        ],
        vitals=(["36.6", "36.8"], ["72", "78"], ["14", "16"], ["98", "99"]),
        exam=[
            "Straight leg raise is positive on the left at 40 degrees; power, reflexes and perianal sensation are normal.",
            "Paraspinal muscle tenderness; no saddle anaesthesia and normal lower limb neurology.",
        ],
        tests=["No investigations needed at this stage.", "No red flag features identified."],
        plan=[
            "Simple analgesia, stay active, physiotherapy referral, and safety-net advice about red flag symptoms.",
            "Naproxen with omeprazole for two weeks, a short course of gabapentin for nerve pain, and physiotherapy.",
        ],
        course=["The patient was discharged from the emergency department the same day."],
        meds=["naproxen 500 mg twice daily for two weeks"],
    ),
    dict(
        dx=["stable angina, low risk"],
        complaint=["central chest tightness on exertion relieved by rest", "chest heaviness when walking uphill"],
        vitals=(["36.7", "36.8"], ["70", "76"], ["14", "16"], ["97", "98"]),
        exam=["Heart sounds are regular with no murmurs; chest clear.", "Normal cardiovascular examination."],
        tests=[
            "ECG shows sinus rhythm without ischaemic changes.",
            "Troponin is below the reference limit at 0 and 3 hours.",
            "Total cholesterol 6.8 mmol/L.",
        ],
        plan=[
            "Start aspirin, atorvastatin 80 mg and a glyceryl trinitrate spray, and refer to the rapid-access chest pain clinic.",
            "Bisoprolol 2.5 mg daily, atorvastatin, sublingual nitrate as needed, and a CT coronary angiogram.",
        ],
        course=["A CT coronary angiogram showed moderate disease in the left anterior descending artery."],
        meds=["atorvastatin 80 mg at night", "aspirin 75 mg once daily"],
    ),
]

NOTE_HEADS = [
    "Progress note.",
    "Clinic note.",
    "Emergency department note.",
    "Ward round note.",
    "GP consultation note.",
]


# ============================================================== general-domain vocabulary

GENERAL_TOPICS: dict[str, list[list[str]]] = {
    "cooking": [
        [
            "Last {day} I finally tried making {dish} at home.",
            "My neighbour swears by her recipe for {dish}, so I asked her to teach me.",
        ],
        [
            "The trick, it turns out, is to let the onions soften slowly over a low heat before adding anything else.",
            "I chopped everything before turning on the stove, which made the whole thing much calmer.",
            "We ran out of fresh herbs, so I used a pinch of dried oregano instead and nobody noticed.",
            "The sauce needed longer than the recipe said, about twenty minutes more, until it thickened.",
            "A squeeze of lemon at the end brightened the flavour more than I expected.",
        ],
        [
            "The kids asked for seconds, which is the best review I could hope for.",
            "Next time I will make a double batch and freeze half of it.",
        ],
    ],
    "travel": [
        [
            "We spent a long weekend in {city} in early {month}.",
            "My sister and I took the night train to {city} for a few days.",
        ],
        [
            "The old town is small enough to explore on foot, and we got pleasantly lost in the narrow streets.",
            "Breakfast at the little bakery near the station became our daily ritual.",
            "We rented bicycles for a day and followed the river path out to the lake.",
            "The museum was free on the first Sunday of the month, so it was crowded but worth it.",
            "It rained on the second afternoon, so we sat in a cafe and played cards for hours.",
        ],
        [
            "I would happily go back, though next time I will pack lighter shoes.",
            "We came home tired, with a camera full of photos and a list of places to see next time.",
        ],
    ],
    "weather": [
        [
            "The forecast for {day} promised sunshine, but the morning began grey and drizzly.",
            "It has been an unusually mild {month} so far.",
        ],
        [
            "By lunchtime the clouds broke up and the temperature climbed to a comfortable twenty degrees.",
            "A strong wind from the west rattled the windows all night.",
            "The first frost left the garden sparkling white until about ten o'clock.",
            "Thunderstorms rolled in late in the afternoon, and the street briefly turned into a small river.",
            "The humidity made even a short walk to the shop feel tiring.",
        ],
        [
            "Everyone seems to agree that it is perfect weather for a picnic.",
            "I keep an umbrella by the door these days, just in case.",
        ],
    ],
    "hobbies": [
        [
            "I took up {hobby} about a year ago, mostly to spend less time looking at screens.",
            "My friend finally convinced me to join her {hobby} group on {day} evenings.",
        ],
        [
            "The first few weeks were frustrating, but progress came faster once I stopped comparing myself with others.",
            "The people in the group are friendly and happy to share tips with beginners.",
            "I now set aside half an hour every morning, and that small routine makes a big difference.",
            "Secondhand equipment turned out to be perfectly fine for getting started.",
            "Watching short video tutorials helped me understand the basics much more quickly.",
        ],
        ["It has become the most relaxing part of my week.", "I am already planning a small project for the summer."],
    ],
}
GENERAL_VOCAB = {
    "day": ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"],
    "month": ["March", "April", "May", "June", "September", "October", "November"],
    "dish": [
        "a vegetable lasagne",
        "lentil soup",
        "banana bread",
        "a Thai green curry",
        "homemade pizza",
        "chicken and leek pie",
        "mushroom risotto",
    ],
    "city": ["Lisbon", "Krakow", "Edinburgh", "Kyoto", "Montreal", "Valencia", "Ljubljana", "Porto"],
    "hobby": [
        "watercolour painting",
        "bird watching",
        "pottery",
        "rock climbing",
        "knitting",
        "chess",
        "gardening",
        "amateur astronomy",
    ],
}


CLAUSES_MORE: dict[str, list[list[str]]] = {
    "Insurance": [
        [
            "During the term and for {years} thereafter, the {B} shall maintain, at its own cost, commercial general liability insurance with limits of not less than {amount} per occurrence.",
            "The {B} shall procure and keep in force with reputable insurers the policies of insurance described in this Section.",
            "Each party shall carry insurance adequate to cover its obligations under this Agreement, including professional indemnity cover of at least {amount}.",
        ],
        [
            "The {A} shall be named as an additional insured on the {B}'s liability policies.",
            "Certificates of insurance shall be delivered to the {A} before any work begins and on each renewal.",
            "The {B} shall give the {A} at least {days} days' written notice of any cancellation or material reduction in cover.",
            "The insurance required by this Section is primary and non-contributory to any insurance maintained by the {A}.",
            "The amount of cover shall not limit the {B}'s liability under this Agreement.",
        ],
        [
            "A failure to maintain the required insurance is a material breach of this Agreement.",
            "The {B} shall require each of its subcontractors to carry equivalent insurance.",
        ],
    ],
    "Audit Rights": [
        [
            "The {B} shall keep complete and accurate records relating to {deliverable} for at least {years} after the year to which they relate.",
            "On {days} days' written notice, the {A} or an independent auditor appointed by it may inspect the books and records of the {B}.",
        ],
        [
            "Audits shall be conducted during normal business hours and not more than once in any twelve-month period.",
            "If an audit reveals an underpayment, the {B} shall pay the shortfall within {days} days together with interest.",
            "Where an audit reveals an overcharge exceeding {percent} of the amounts due, the {B} shall also bear the reasonable cost of the audit.",
            "The auditor shall be bound by obligations of confidentiality and shall report only whether the amounts paid were correct.",
            "The {B} shall give the auditor reasonable access to its premises, systems and personnel.",
        ],
        [
            "The rights in this Section survive termination for {years}.",
            "Each party shall bear its own costs of an audit except as stated above.",
        ],
    ],
    "Data Protection": [
        [
            "Each party shall comply with all applicable data protection laws in connection with the processing of personal data under this Agreement.",
            "To the extent the {B} processes personal data on behalf of the {A}, it does so as a processor acting only on the documented instructions of the {A}.",
            "The {B} shall implement appropriate technical and organisational measures to protect personal data against unauthorised or unlawful processing.",
        ],
        [
            "The {B} shall notify the {A} without undue delay, and in any event within seventy-two hours, after becoming aware of a personal data breach.",
            "Personal data shall not be transferred outside the country of origin without the prior written consent of the {A} and appropriate safeguards.",
            "The {B} shall ensure that every person authorised to process the personal data is subject to a duty of confidence.",
            "On termination, the {B} shall delete or return all personal data and delete existing copies unless the law requires storage.",
            "The {B} shall assist the {A} in responding to requests from data subjects exercising their rights.",
            "The {B} shall not engage another processor without the prior specific or general written authorisation of the {A}.",
        ],
        [
            "The {B} shall make available all information necessary to demonstrate compliance with this Section.",
            "In the event of conflict, the data processing terms prevail over any other provision of this Agreement.",
        ],
    ],
    "Anti-Bribery": [
        [
            "Each party shall comply with all applicable laws relating to anti-bribery and anti-corruption.",
            "Neither party shall offer, give, request or accept any bribe or improper payment in connection with this Agreement.",
        ],
        [
            "Each party shall maintain adequate procedures designed to prevent bribery by persons associated with it.",
            "The {B} shall promptly report to the {A} any request for an improper payment received in connection with this Agreement.",
            "Facilitation payments are prohibited, whatever their amount.",
            "The {B} shall keep accurate records of all payments made to public officials, if any are permitted by law.",
        ],
        [
            "Breach of this Section entitles the other party to terminate this Agreement immediately by written notice.",
            "The {B} shall ensure that its subcontractors accept obligations equivalent to those in this Section.",
        ],
    ],
    "Service Levels": [
        [
            "The {B} shall provide {deliverable} so as to meet or exceed the service levels set out in the Schedule.",
            "The {B} shall ensure that {deliverable} are available for at least 99.5 percent of each calendar month, excluding scheduled maintenance.",
        ],
        [
            "If the {B} fails to meet a service level in any month, the {A} shall be entitled to the service credits stated in the Schedule.",
            "Service credits are a price adjustment reflecting the reduced value of the services and not an estimate of loss.",
            "Scheduled maintenance shall be notified at least {days} days in advance and performed outside business hours.",
            "The {B} shall deliver a monthly report measuring its performance against each service level.",
            "Persistent failure, meaning failure to meet the same service level in three consecutive months, is a material breach.",
        ],
        [
            "Service credits shall not exceed {percent} of the monthly charges in aggregate.",
            "The parties shall review the service levels annually in good faith.",
        ],
    ],
    "Exclusivity": [
        [
            "During the term, the {A} appoints the {B} as its exclusive distributor of {deliverable} within the Territory.",
            "The {A} shall not, during the term, appoint any other person to supply {deliverable} in the Territory.",
        ],
        [
            "The {B} shall not actively market competing products in the Territory without the {A}'s prior written consent.",
            "Exclusivity is conditional on the {B} achieving the minimum purchase commitment for each contract year.",
            "If the minimum commitment is not met, the {A} may on {days} days' notice convert the appointment to a non-exclusive one.",
            "Nothing in this Section prevents the {A} from responding to unsolicited orders from outside the Territory.",
        ],
        [
            "The exclusivity granted in this Section ends automatically on expiry or termination of this Agreement.",
            "The {B} acknowledges that the restrictions in this Section are reasonable in scope and duration.",
        ],
    ],
    "Delivery and Title": [
        [
            "The {B} shall deliver {deliverable} to the delivery address on the dates stated in the relevant order.",
            "Delivery shall be made on the terms specified in the order, and time of delivery is of the essence.",
        ],
        [
            "Risk of loss passes to the {A} on completion of unloading at the delivery address.",
            "Title passes to the {A} on the earlier of payment in full and delivery.",
            "The {A} may reject any delivery that does not conform to the order within {days} days after receipt.",
            "Partial deliveries are permitted only with the {A}'s written agreement.",
            "The {B} shall pack {deliverable} securely and mark each package with the order number.",
        ],
        [
            "If delivery is late by more than {days} days, the {A} may cancel the order without liability.",
            "Acceptance of a delivery does not waive any claim for defects discovered later.",
        ],
    ],
    "Term and Renewal": [
        [
            "This Agreement commences on the Effective Date and continues for an initial term of {years}.",
            "The initial term of this Agreement is {months} from the date of the last signature below.",
        ],
        [
            "Thereafter it renews automatically for successive periods of one year unless either party gives notice of non-renewal at least {days} days before the end of the then-current term.",
            "The charges for any renewal term may be increased by no more than {percent} over the charges for the preceding term.",
            "The parties shall meet at least {days} days before expiry to discuss the terms of any renewal.",
            "Any order placed before expiry shall continue to be governed by this Agreement until completed.",
        ],
        [
            "Expiry does not affect any rights or liabilities that accrued before it.",
            "The provisions that by their nature are intended to survive shall survive expiry.",
        ],
    ],
    "Acceptance Testing": [
        [
            "On delivery of {deliverable}, the {A} shall carry out the acceptance tests described in the Schedule.",
            "The {B} shall not be entitled to payment for a milestone until {deliverable} for that milestone have passed acceptance testing.",
        ],
        [
            "The {A} shall notify the {B} of any failure within {days} days after completing the tests, giving reasonable details.",
            "The {B} shall correct any failure and resubmit {deliverable} for testing within {days} days.",
            "If {deliverable} fail acceptance testing twice, the {A} may terminate the relevant order and recover all sums paid for it.",
            "Use of {deliverable} in live operation before acceptance shall not constitute acceptance.",
            "The {B} may attend acceptance tests at its own cost.",
        ],
        [
            "Acceptance shall not relieve the {B} of its warranty obligations.",
            "A certificate of acceptance signed by the {A} is conclusive evidence that the tests have been passed.",
        ],
    ],
    "Insolvency": [
        [
            "Either party may terminate this Agreement immediately by notice if the other becomes insolvent or unable to pay its debts as they fall due.",
            "An Insolvency Event occurs if a party has a receiver, administrator or liquidator appointed over any of its assets.",
        ],
        [
            "An Insolvency Event includes the passing of a resolution for winding up, other than for a solvent reorganisation.",
            "Each party shall notify the other promptly if it becomes aware of any circumstances likely to lead to an Insolvency Event.",
            "On termination under this Section, all sums owing to the terminating party become immediately due.",
            "The terminating party may retain and use any materials already paid for.",
        ],
        [
            "The rights in this Section are in addition to any other remedies available to the terminating party.",
            "This Section applies equally to any analogous procedure in any jurisdiction.",
        ],
    ],
    "Publicity": [
        [
            "Neither party shall issue any press release or public statement about this Agreement without the other's prior written approval.",
            "The {B} shall not use the name, logo or trade marks of the {A} in any advertising without consent.",
        ],
        [
            "Approval shall not be unreasonably withheld or delayed for an announcement required by law or a stock exchange.",
            "The {A} may identify the {B} as a supplier in its internal communications.",
            "Any approved statement may be repeated afterwards without further approval, provided its substance is unchanged.",
            "Each party shall remove any reference to the other from its website promptly on request.",
        ],
        [
            "This Section survives termination for {years}.",
            "Breach of this Section may be restrained by injunction.",
        ],
    ],
    "Subcontracting": [
        [
            "The {B} shall not subcontract any of its obligations without the prior written consent of the {A}.",
            "The {B} may use subcontractors to perform {deliverable}, provided it remains fully responsible for their acts and omissions.",
        ],
        [
            "The {B} shall ensure that every subcontract contains terms no less protective of the {A} than those of this Agreement.",
            "The {A} may require the removal of any subcontractor whose performance is unsatisfactory.",
            "The {B} shall provide the {A} with a list of all current subcontractors on request.",
            "Consent to a subcontract does not relieve the {B} of any obligation under this Agreement.",
        ],
        [
            "The {B} shall pay its subcontractors within {days} days of receipt of a valid invoice.",
            "Any subcontract shall terminate automatically on termination of this Agreement.",
        ],
    ],
}
STATUTE_MORE = {
    "Residential repairs": [
        "A landlord shall keep the dwelling fit for human habitation and in a reasonable state of repair throughout the tenancy.",
        "A tenant may give written notice of a defect, and the landlord shall begin repairs within {days_short} days of receiving it.",
        "If the landlord fails to act, the tenant may carry out the repair and deduct the reasonable cost from rent, up to one month's rent in any year.",
        "This section does not apply to damage caused by the tenant's own failure to use the dwelling in a proper manner.",
        "A landlord shall not retaliate against a tenant who has in good faith complained of a defect.",
    ],
    "Unsolicited calls": [
        "No person shall make a telephone call for the purpose of marketing to a number registered on the do-not-call list.",
        "A caller shall state at the beginning of each call the name of the person on whose behalf it is made.",
        "Calls may be made only between nine in the morning and eight in the evening, local time of the person called.",
        "A person who receives more than one call in violation of this section within any twelve months may recover {fine_small} for each call.",
        "The regulator may impose a civil penalty of up to {fine} for each violation.",
    ],
    "Product recalls": [
        "A manufacturer that becomes aware that a product it has placed on the market presents a serious risk shall notify the department within {days_short} days.",
        "The department may order the manufacturer to recall the product from consumers and to offer a repair, replacement or refund.",
        "A distributor shall cooperate with the manufacturer and the department in any recall.",
        "A notice of recall shall be published in a manner likely to reach the persons who bought the product.",
        "Failure to comply with a recall order is an offence punishable by a fine of up to {fine}.",
    ],
    "Wage payment": [
        "An employer shall pay wages in full at least once every {days_short} days, on regular paydays designated in advance.",
        "An employer shall give each employee an itemised statement showing gross wages, deductions and net pay.",
        "No deduction may be made from wages unless required by law or authorised in writing by the employee.",
        "An employee whose wages are not paid when due may recover the unpaid wages, liquidated damages in an equal amount and reasonable attorney's fees.",
        "On termination of employment, all wages earned shall be paid no later than the next regular payday.",
    ],
    "Small claims procedure": [
        "The small claims division has jurisdiction over actions for the recovery of money not exceeding {fine}.",
        "A claim is commenced by filing a short statement of the claim with the clerk and paying the filing fee.",
        "The rules of evidence do not apply strictly, and the judge may admit any evidence of a kind commonly relied on by reasonable persons.",
        "A party may be represented by a person who is not a lawyer with the leave of the court.",
        "An appeal lies only on a question of law and must be filed within {days_plain} days after judgment.",
    ],
    "Notaries": [
        "A notary public shall not notarise a signature unless the signer appears personally before the notary at the time of notarisation.",
        "A notary shall keep a journal recording the date, the type of act, and the name and address of each signer.",
        "A notary may charge a fee not exceeding the amount set by regulation for each act.",
        "A notary who knowingly makes a false certificate is guilty of a misdemeanour and the commission may be revoked.",
        "A commission is valid for {n_years} years and may be renewed on application.",
    ],
}
CASE_MORE = [
    (
        "logistics operator",
        "p",
        "breach of a service level agreement",
        "The operator's warehouse management system was unavailable for several days, and the supplier argued that service credits were the only remedy.",
        "the service credit regime did not exclude a claim for damages for a persistent failure amounting to repudiation",
        "The court held that clear words are needed to exclude a remedy for repudiatory breach, and a schedule of price adjustments does not supply them.",
    ),
    (
        "hospital trust",
        "d",
        "breach of a data processing agreement",
        "A contractor processing patient records suffered a security incident, and the trust had delayed notifying the people affected.",
        "the contractor was not liable for losses flowing from the trust's own delay in giving notice",
        "The court applied ordinary principles of causation and found that the trust's delay was an intervening act that broke the chain.",
    ),
    (
        "retail chain",
        "p",
        "breach of an exclusive supply agreement",
        "The manufacturer began selling the same products online directly to customers in the distributor's territory.",
        "online sales to customers in the territory breached the exclusivity clause even though the website was hosted abroad",
        "The court looked at where the customers were and where the goods were delivered, not at where the seller's servers happened to be.",
    ),
    (
        "engineering firm",
        "d",
        "recovery of the price of goods",
        "The buyer rejected a consignment of pumps after testing showed a defect, and the seller sued for the price, saying the buyer had already put the pumps to use.",
        "use of the goods for testing did not amount to acceptance that barred later rejection",
        "The court reasoned that a buyer must have a reasonable opportunity to examine goods, and using them briefly for that purpose is consistent with the seller's ownership.",
    ),
    (
        "telecommunications provider",
        "d",
        "breach of a renewal provision",
        "The customer sent its notice of non-renewal by email two days before the deadline, and the provider said the contract required post.",
        "the notice was effective because the contract allowed notice in writing and said nothing to exclude email",
        "The court held that notice provisions are construed to achieve their purpose, which is to ensure that the other party actually learns of the decision.",
    ),
    (
        "insurer",
        "p",
        "subrogated recovery for flood damage",
        "After paying a warehouse owner for flood damage, the insurer sued the contractor whose drainage works had allegedly caused the flooding.",
        "the waiver of subrogation in the construction contract barred the insurer's claim",
        "The court explained that an insurer stands in the shoes of the insured and can have no better rights than the insured itself had against the contractor.",
    ),
]


CONDITIONS_MORE = [
    dict(
        dx=["acute asthma exacerbation, moderate", "moderate exacerbation of asthma triggered by a viral infection"],
        complaint=[
            "wheeze and breathlessness not relieved by the reliever inhaler",
            "night-time cough and chest tightness",
        ],
        vitals=(["36.9", "37.4", "37.8"], ["102", "108", "114"], ["22", "24", "25"], ["93", "94", "95"]),
        exam=[
            "Widespread expiratory wheeze; able to complete sentences.",
            "Prolonged expiration with polyphonic wheeze in both lungs and no focal signs.",
        ],
        tests=[
            "Peak expiratory flow 58 percent of best.",
            "Peak flow improved from 52 to 78 percent of predicted after nebulised salbutamol.",
            "Chest radiograph: hyperexpanded lungs, no focal opacity.",
        ],
        plan=[
            "Nebulised salbutamol and ipratropium, oral prednisolone 40 mg daily for five days, and inhaler technique review.",
            "Prednisolone 40 mg for five days, step up to a combination preventer inhaler, and a written asthma action plan.",
        ],
        course=[
            "Bronchodilators were weaned to four-hourly by day two and peak flow recovered to 85 percent of best.",
            "The patient was reviewed by the asthma nurse, who corrected a poor inhaler technique.",
        ],
        meds=[
            "prednisolone 40 mg once daily to complete five days",
            "a combination preventer inhaler two puffs twice daily",
        ],
    ),
    dict(
        dx=["iron deficiency anaemia", "iron deficiency anaemia, source to be investigated"],
        complaint=["tiredness and breathlessness on climbing stairs", "fatigue, palpitations and pale skin"],
        vitals=(["36.5", "36.7"], ["92", "98", "104"], ["16", "18"], ["97", "98", "99"]),
        exam=[
            "Conjunctival pallor; no lymphadenopathy; abdomen soft and non-tender.",
            "Pale; flow murmur at the left sternal edge.",
        ],
        tests=[
            "Haemoglobin 84 g/L with a mean cell volume of 71 fL.",
            "Ferritin 6 micrograms/L.",
            "Coeliac serology negative.",
        ],
        plan=[
            "Oral ferrous sulfate 200 mg once daily, and an urgent referral for upper and lower endoscopy.",
            "Start oral iron, repeat the blood count in four weeks, and investigate for gastrointestinal blood loss.",
        ],
        course=[
            "Gastroscopy showed a duodenal ulcer, and a proton pump inhibitor was started.",
            "Haemoglobin rose by 15 g/L over three weeks of oral iron.",
        ],
        meds=["ferrous sulfate 200 mg once daily", "omeprazole 40 mg once daily for eight weeks"],
    ),
    dict(
        dx=["migraine without aura", "chronic migraine with medication-overuse headache"],
        complaint=[
            "recurrent throbbing one-sided headaches with nausea",
            "near-daily headaches despite regular painkillers",
        ],
        vitals=(["36.6", "36.8"], ["68", "74", "80"], ["14", "16"], ["98", "99"]),
        exam=[
            "Neurological examination is normal, including fundoscopy.",
            "No focal neurological signs; neck supple; normal optic discs.",
        ],
        tests=[
            "Headache diary shows painkillers taken on 18 days a month.",
            "Blood pressure and inflammatory markers are normal.",
        ],
        plan=[
            "Stop regular analgesics, start propranolol 40 mg twice daily as prevention, and use a triptan for attacks.",
            "Offer amitriptyline 10 mg at night as a preventive, keep a headache diary, and review in eight weeks.",
        ],
        course=["The patient was managed in the community throughout."],
        meds=["propranolol 40 mg twice daily", "sumatriptan 50 mg at the onset of an attack"],
    ),
    dict(
        dx=["acute gastroenteritis with mild dehydration", "viral gastroenteritis"],
        complaint=["vomiting and watery diarrhoea", "abdominal cramps and loose stools after a family meal"],
        vitals=(["37.6", "38.0", "38.2"], ["96", "104", "110"], ["16", "18", "20"], ["97", "98", "99"]),
        exam=[
            "Dry mucous membranes; abdomen soft with mild diffuse tenderness.",
            "Capillary refill three seconds; hyperactive bowel sounds; no guarding.",
        ],
        tests=[
            "Sodium 133 mmol/L, potassium 3.2 mmol/L, creatinine slightly raised.",
            "Stool culture sent.",
        ],
        plan=[
            "Oral rehydration solution, antiemetic as needed, and intravenous fluids if oral intake fails.",
            "Intravenous fluids with potassium replacement, then oral fluids as tolerated and hand hygiene advice.",
        ],
        course=[
            "Vomiting settled within 24 hours and the electrolytes normalised with fluids.",
            "Stool culture grew no pathogens.",
        ],
        meds=["oral rehydration sachets after each loose stool", "ondansetron 4 mg up to twice daily for two days"],
    ),
]


# ============================================================== held-out groups
#
# Every pool above and below (clause and section types, statute topics, case patterns, clinical scenarios, drugs,
# sentence frames, layouts, names and other vocabularies) is cut by position into a training group and a held-out
# group. Training passages are written only from the training group; validation and test passages only from the
# held-out group (they share it with each other, but no passage). So held-out text shares no sentence frame, no
# document type of its own, and no name with training: a model can lower its perplexity only by having learnt the
# domain's language, not by recalling a template it saw.

GROUPS = ("train", "heldout")
HELD_OUT_POSITION = 1  # items at positions 1, 4, 7, ... (every third, starting with the second) are held out
UNSPLIT_VOCAB = {"sex", "year"}  # splitting these would make held-out patients all one sex, or cases all one era


def take(items, group: str) -> list:
    """The items of `items` that belong to `group`: about a third held out, by position (not by chance, so a
    change of seed never moves an item between groups)."""
    items = list(items)
    if len(items) < 2:
        raise ValueError(f"a pool of {len(items)} item(s) cannot be split into groups: {items!r}")
    held = group == "heldout"
    return [x for i, x in enumerate(items) if (i % 3 == HELD_OUT_POSITION) == held]


def take_vocab(vocab: dict[str, list[str]], group: str) -> dict[str, list[str]]:
    return {k: list(v) if k in UNSPLIT_VOCAB else take(v, group) for k, v in vocab.items()}


def take_each(table: dict[str, list], group: str) -> dict[str, list]:
    """Each pool of a table of pools, cut to `group`."""
    return {name: take(pool, group) for name, pool in table.items()}


def take_keys(table: dict, group: str) -> dict:
    return {k: table[k] for k in take(sorted(table), group)}


def take_drugs(group: str) -> list[tuple]:
    """The medicines of `group`: by position, except that a medicine the training group's clinical scenarios
    prescribe is a training medicine (its name would otherwise reach training through those scenarios)."""
    prescribed = " ".join(_strings(take(CONDITIONS + CONDITIONS_MORE, "train"))).lower()
    trained = {d[0] for d in DRUGS if d in take(DRUGS, "train") or d[0].lower() in prescribed}
    return [d for d in DRUGS if (d[0] in trained) == (group == "train")]


# ============================================================== layouts and registers added for variety
# Each list is a pool of alternative frames, split like every other pool (so each needs at least two items).

CLAUSE_PREFACE = [
    'This Section forms part of the agreement between {ca} (the "{A}") and {cb} (the "{B}").',
    'As between {ca} (the "{A}") and {cb} (the "{B}"), the following terms apply.',
    "The provisions below bind {ca}, referred to as the {A}, and {cb}, referred to as the {B}.",
    'For the purposes of this Section, {ca} is the "{A}" and {cb} is the "{B}".',
    "In this Section, references to the {A} mean {ca} and references to the {B} mean {cb}.",
    "The following Section applies to every order placed by {cb} (the {B}) with {ca} (the {A}).",
]
CONTRACT_PREAMBLES = [
    'This {kind} (the "Agreement") is entered into as of {date} by and between {ca} (the "{A}") and {cb} (the "{B}").',
    "THIS {kind_upper} is made on {date} between {ca}, as {A}, and {cb}, as {B}.",
    'The parties to this {kind} are {ca} ("{A}") and {cb} ("{B}"), and it takes effect on {date}.',
    "{ca} and {cb} agree as follows, with effect from {date}, in this {kind}.",
    "This {kind} records the terms on which {ca} (the {A}) deals with {cb} (the {B}) from {date}.",
    "Dated {date}. Parties: (1) {ca} (the {A}); (2) {cb} (the {B}). Document: {kind}.",
]
CONTRACT_RECITALS = [
    "WHEREAS the {A} wishes to obtain, and the {B} is willing to provide, the matters described below on the terms of this Agreement;",
    "Background: the parties have worked together informally for some time and now wish to record their arrangement in writing.",
    "RECITALS. The {B} carries on business in the supply of {deliverable}, and the {A} wishes to engage it.",
    "The parties intend this Agreement to replace every earlier understanding between them on its subject matter.",
    "It is agreed that the terms set out below apply to the supply of {deliverable}.",
    "NOW, THEREFORE, in consideration of the mutual covenants contained herein, the parties agree as follows.",
]
CONTRACT_KINDS = [
    "Master Services Agreement",
    "Software Licence Agreement",
    "Supply Agreement",
    "Consulting Agreement",
    "Distribution Agreement",
    "Commercial Lease",
    "Loan Agreement",
    "Franchise Agreement",
    "Mutual Non-Disclosure Agreement",
]
CONTRACT_DATES = [
    "1 March 2021",
    "15 January 2019",
    "30 June 2022",
    "the Effective Date",
    "12 September 2020",
    "4 April 2023",
    "the date of the last signature below",
]
STATUTE_TAILS = [
    "Source: {y} Acts, ch. {ch}, § {s}.",
    "Cross-reference: see {code} § {n}.",
    "History: added by {y} Acts, ch. {ch}; amended {y2}.",
    "Editor's note: subsection numbering follows the {y} revision.",
    "Derived from former § {n} of the {code}.",
    "Effective date: this section applies to causes of action accruing on or after 1 July {y}.",
]
STATUTE_DEFINITIONS = [
    'In this section, "{term}" has the meaning given in § {n}.',
    'For the purposes of this chapter, the term "{term}" includes any successor or assignee.',
    'As used in this section, "{term}" means a person who regularly engages in the activity regulated by this chapter.',
    "Nothing in this section limits any right or remedy available under any other law of this State.",
    "The provisions of this section are severable, and the invalidity of one subsection does not affect the others.",
    "A rule adopted by the department under this section has the force of law.",
]
STATUTE_TERMS = ["person", "consumer", "business day", "record", "owner", "public body", "employer", "resident"]
CASE_CAPTION_SUFFIX = ["Holdings", "Corp.", "Ltd.", "LLC", "Partners", "Group plc", "Enterprises Inc."]
CASE_PLAINTIFF = [
    "The plaintiff, a {plaintiff}, sued for {claim}.",
    "A {plaintiff} brought this action for {claim}.",
    "This appeal arises from a claim by a {plaintiff} for {claim}.",
    "The claimant, described in the record as a {plaintiff}, sought relief for {claim}.",
    "In the proceedings below, a {plaintiff} alleged {claim}.",
    "The dispute began when a {plaintiff} filed suit alleging {claim}.",
]
CASE_BELOW = [
    "The trial court {below}.",
    "At first instance, the court {below}.",
    "The lower court {below}, and this appeal followed.",
    "Below, the judge {below}.",
    "After a hearing, the district court {below}.",
    "The court of first instance {below}, and the losing party appealed.",
]
CASE_HELD = [
    "On appeal, the {court} held that {holding}.",
    "The {court} concluded that {holding}.",
    "Held: {holding}.",
    "The question for the {court} was whether, on the facts found, {holding}; it answered yes.",
    "A unanimous panel of the {court} decided that {holding}.",
    "The {court} ruled that {holding}.",
]
OUTCOMES_AGREE = [
    "Affirmed.",
    "Affirmed, with costs to the respondent.",
    "Appeal dismissed.",
    "The judgment below is affirmed in all respects.",
    "Appeal dismissed with costs.",
]
OUTCOMES_DISAGREE = [
    "Reversed and remanded.",
    "Judgment vacated and the matter remitted to the trial court.",
    "Reversed in part and remanded for further proceedings consistent with this opinion.",
    "Appeal allowed; the order below is set aside.",
    "The judgment is reversed and judgment entered for the appellant.",
    "Appeal allowed and a new trial ordered.",
]
# Court reasoning (the body of an appellate opinion), the register users bring most often besides contracts.
OPINION_OPENERS = [
    "{judge}, J., delivered the opinion of the court.",
    "Opinion of the court by Justice {judge}.",
    "{judge} LJ: This appeal concerns {claim}.",
    "Before the court is an appeal in a dispute over {claim}.",
    "Judge {judge}, writing for the panel.",
    "PER CURIAM. We consider an appeal arising out of {claim}.",
]
OPINION_REVIEW = [
    "We review the grant of summary judgment de novo, viewing the evidence in the light most favourable to the non-moving party.",
    "The construction of a written contract is a question of law, which we decide afresh.",
    "Findings of fact are reviewed for clear error, but the legal conclusions drawn from them are reviewed de novo.",
    "An appellate court will not disturb the trial judge's evaluation of the evidence unless it is plainly wrong.",
    "Whether a contractual term is ambiguous is a question of law for the court.",
    "We may affirm on any ground supported by the record, even one the trial court did not rely on.",
    "The interpretation of a statute is a matter of law, and we owe the lower court's reading no deference.",
    "A decision to grant or refuse an injunction is reviewed for abuse of discretion.",
    "The appellant bears the burden of showing that the error affected the outcome.",
]
OPINION_PRINCIPLES = [
    "The object of interpretation is to find the meaning the words would convey to a reasonable person with the background knowledge the parties had.",
    "Where the language is clear, the court gives effect to it, even if the result seems commercially unwise.",
    "Words are read in their context, and a contract is read as a whole, so that no provision is rendered meaningless.",
    "A party seeking to avoid a bargain on the ground of unfairness must show more than that it turned out badly.",
    "Ambiguity is resolved against the party that drafted the term.",
    "The court will not imply a term merely because it would be reasonable; it must be necessary to give the contract business efficacy.",
    "Evidence of the parties' negotiations is generally inadmissible to construe the final written agreement.",
    "A specific provision prevails over a general one dealing with the same subject.",
    "Statutes in derogation of the common law are strictly construed.",
    "The court presumes that the legislature did not intend an absurd result.",
    "Equity will not assist a party who has slept on its rights.",
    "Public policy limits the freedom of contract only in clear cases.",
]
OPINION_ARGUMENTS = [
    "The appellant argues that the judge gave too little weight to the commercial purpose of the agreement.",
    "Counsel for the respondent submits that the point was not taken below and cannot be raised now.",
    "The appellant's principal contention is that the clause must be read against the party that drafted it.",
    "The respondent answers that the wording admits of only one sensible meaning.",
    "It is said that the trial court overlooked evidence of a later course of dealing between the parties.",
    "The appellant complains that the judge decided a point neither side had argued.",
    "The respondent relies on the absence of any written objection at the time.",
    "Both parties accept that the facts are not in dispute; the disagreement is about their legal effect.",
]
OPINION_APPLY = [
    "Applying those principles here, we conclude that {holding}.",
    "On this record, we are satisfied that {holding}.",
    "Measured against that standard, the argument fails, because {holding}.",
    "It follows that {holding}.",
    "We therefore agree with the respondent that {holding}.",
    "For these reasons, we hold that {holding}.",
]
OPINION_CLOSERS = [
    "Nothing in this opinion should be read as deciding the position under a differently worded clause.",
    "We express no view on the remaining issues, which the trial court may address on remand.",
    "The other grounds of appeal add nothing to the main argument and are rejected.",
    "Costs follow the event.",
    "We are grateful to counsel for their careful submissions.",
    "The cross-appeal is dismissed as moot.",
]
JUDGES = [
    "Okafor",
    "Haldane",
    "Moreau",
    "Castellanos",
    "Birkett",
    "Nakamura",
    "Ferreira",
    "Lindgren",
    "Adeyemi",
    "Sorensen",
    "Kaczmarek",
    "Whitcombe",
]


NOTE_HEADS_MORE = [
    "Outpatient review.",
    "Telephone consultation.",
    "Medical admission note.",
    "Acute medical unit clerking.",
    "Follow-up visit.",
    "Urgent care note.",
    "Respiratory clinic letter.",
]
NOTE_SUBJECTIVE = [
    "S: {age}-year-old {sex} with {pmh} presents with {complaint} for {duration}.",
    "S: {name}, a {age}-year-old {sex} with a background of {pmh}, reports {complaint} over the last {duration}.",
    "History: {complaint} for {duration} in a {age}-year-old {sex}; past history of {pmh}.",
    "Presenting complaint: {complaint}, {duration}. Background: {pmh}.",
    "{name} ({age}, {sex}) attends with {complaint} which began {duration} ago; known {pmh}.",
    "Seen today: {age}-year-old {sex}, {duration} of {complaint}. Relevant history includes {pmh}.",
]
NOTE_OBJECTIVE = [
    "O: BP {sys}/{dia} mmHg, HR {hr} bpm, RR {rr}, temperature {temp} C, SpO2 {spo2}% on room air. {exam}",
    "On examination: pulse {hr}, blood pressure {sys}/{dia}, respiratory rate {rr}, saturations {spo2}% on air, temperature {temp}. {exam}",
    "Observations: T {temp}, HR {hr}, BP {sys}/{dia}, RR {rr}, sats {spo2}%. {exam}",
    "Exam: {exam} Vital signs: heart rate {hr}/min, BP {sys}/{dia}, temp {temp} C, oxygen saturation {spo2} percent.",
    "Examination findings: {exam} Temperature {temp} C; pulse {hr}; BP {sys}/{dia} mmHg; RR {rr}; SpO2 {spo2}%.",
    "Vitals {temp} C, {hr} bpm, {sys}/{dia}, RR {rr}, {spo2}% RA. {exam}",
]
NOTE_ASSESSMENT = [
    "A: {dx}.",
    "Impression: {dx}.",
    "Assessment: most likely {dx}.",
    "Working diagnosis: {dx}.",
    "Clinical impression is of {dx}.",
    "Diagnosis: {dx}.",
]
NOTE_PLAN = [
    "P: {plan}",
    "Plan: {plan}",
    "Management: {plan}",
    "Agreed plan: {plan}",
    "Actions: {plan}",
    "Treatment plan: {plan}",
]
NOTE_FOLLOWUP = [
    "Review after {duration}: {course}",
    "Follow-up visit. {course}",
    "Addendum, {duration} later: {course}",
    "Telephone review after {duration}. {course}",
    "Seen again in clinic. {course}",
    "Progress since last review: {course}",
]
DISCHARGE_HEADS = [
    "Discharge summary. Patient: {name}, {age}-year-old {sex}.",
    "Hospital discharge letter for {name} ({age}, {sex}).",
    "Discharge summary for {name}, aged {age}.",
    "Inpatient discharge note. Name: {name}. Age: {age}.",
    "Summary of admission: {name}, {age}-year-old {sex}.",
    "Discharge communication to the GP regarding {name}, {age}.",
]
DISCHARGE_REASON = [
    "Admitted with {complaint}; diagnosis on discharge: {dx}.",
    "Reason for admission: {complaint} in a patient with {pmh}. Final diagnosis: {dx}.",
    "Presented with {complaint} and was found to have {dx}.",
    "Principal diagnosis: {dx}. Presenting symptoms: {complaint}.",
    "Admitted via the emergency department with {complaint}; the final diagnosis was {dx}.",
    "Diagnosis: {dx}, presenting as {complaint}, on a background of {pmh}.",
]
DISCHARGE_INITIAL = [
    "Initial management: {plan}",
    "Treatment on admission: {plan}",
    "In the emergency department: {plan}",
    "Early management included the following. {plan}",
    "First 24 hours: {plan}",
    "On arrival: {plan}",
]
DISCHARGE_STAY = [
    "Length of stay: {los} days.",
    "Discharged home after {los} days in a stable condition.",
    "Total inpatient stay {los} days.",
    "Went home on day {los}, mobilising independently.",
    "Discharged on day {los} to the care of the family.",
    "The admission lasted {los} days.",
]
DISCHARGE_MEDS = [
    "Discharge medications: {meds}.",
    "New medicines on discharge: {first_med}.",
    "Medicines to take home: {meds}.",
    "Changes to medication: started {first_med}.",
    "TTO: {meds}.",
    "Please continue {meds}.",
]
DISCHARGE_GP = [
    "The GP is asked to review renal function and blood pressure in one week.",
    "{followup}",
    "GP actions: check electrolytes in one week and review the medication list.",
    "Please arrange a review in the practice within two weeks.",
    "Hospital follow-up has been booked in clinic in six weeks.",
    "No GP action is required beyond the routine review.",
]
LEAFLET_HEADS = [
    "Patient information leaflet: {name}.",
    "Package leaflet: information for the user. {name}.",
    "Your medicine: {name}.",
    "About {name}: what you need to know.",
    "Information for patients prescribed {name}.",
    "{name}: a guide for patients and carers.",
]
LEAFLET_CLASS = [
    "{name} is {klass}.",
    "{name} is a prescription medicine; it is {klass}.",
    "{name} belongs to a group of medicines called {klass_bare}.",
    "The medicine in this leaflet, {name}, is {klass}.",
    "{name} works as {klass}.",
    "Type of medicine: {klass_bare}.",
]
LEAFLET_USES = [
    "It is used for {uses}.",
    "What {name} is used for: {uses}.",
    "Doctors prescribe it for {uses}.",
    "You have been given this medicine for {uses}.",
    "It is used to treat {uses}.",
    "Uses: {uses}.",
]
LEAFLET_AVOID = [
    "Do not take {name} if {avoid}.",
    "Before you take {name}, tell your doctor if {avoid}, as it may not be suitable for you.",
    "{name} is not suitable for everyone: it should not be used if {avoid}.",
    "Check with your doctor first if {avoid}.",
    "Warning: do not use this medicine if {avoid}.",
    "You should not take it if {avoid}.",
]
LEAFLET_DOSE = [
    "The usual adult dose is {dose}.",
    "How to take it: the usual adult dose is {dose}, but always follow your prescriber's instructions.",
    "Adults usually take {dose}.",
    "Dose: {dose}, unless your doctor tells you otherwise.",
    "Most adults are prescribed {dose}.",
    "Take it exactly as prescribed; a typical adult dose is {dose}.",
]
LEAFLET_SIDE = [
    "Common side effects include {side}.",
    "Like all medicines, {name} can cause side effects, such as {side}, although not everybody gets them.",
    "Possible side effects: {side}.",
    "Some people notice {side}.",
    "Side effects reported by users include {side}.",
    "Tell your doctor if you get {side} and it bothers you.",
]
LEAFLET_EXTRAS = [
    "Tell your doctor or pharmacist if you are taking, have recently taken or might take any other medicines, including herbal remedies.",
    "If you are pregnant or breastfeeding, ask your doctor for advice before taking this medicine.",
    "If you take more than you should, contact your doctor or the nearest emergency department immediately.",
    "If you forget a dose, take it as soon as you remember unless it is nearly time for the next dose; do not take a double dose.",
    "Store below 25 C in the original package and keep out of the sight and reach of children.",
    "Keep all appointments for blood tests and reviews while you take this medicine.",
    "Do not stop taking this medicine suddenly without talking to your doctor.",
    "Ask your pharmacist how to dispose of medicines you no longer use.",
    "Some of the ingredients may cause allergic reactions in sensitive people.",
]
# Prescribing information (the professional drug-information register).
DRUGINFO_LAYOUTS = [
    (
        "Indications: {uses}.",
        "Dosage and administration: {dose}.",
        "Contraindications: {avoid}.",
        "Adverse reactions: {side}.",
    ),
    ("Therapeutic class: {klass_bare}.", "Licensed use: {uses}.", "Posology: {dose}.", "Undesirable effects: {side}."),
    (
        "{name} ({klass_bare}) is indicated for {uses}.",
        "Recommended dose: {dose}.",
        "It is contraindicated when {avoid}.",
        "The most frequent adverse events are {side}.",
    ),
    (
        "Pharmacological group: {klass_bare}.",
        "Approved indications include {uses}.",
        "Adult dosing: {dose}.",
        "Reported adverse effects comprise {side}.",
    ),
    ("Drug class: {klass_bare}.", "Use: {uses}.", "Dose (adults): {dose}.", "Avoid if {avoid}."),
    (
        "Summary of product characteristics: {name}.",
        "Therapeutic indications: {uses}.",
        "Method of administration and dose: {dose}.",
        "Contraindicated if {avoid}.",
    ),
]
DRUGINFO_NOTES = [
    "Monitor renal function before starting and periodically during treatment.",
    "Review the need for continued therapy at least every twelve months.",
    "Dose reduction may be required in hepatic impairment.",
    "Use with caution in the elderly, who may be more sensitive to adverse effects.",
    "Clinically significant interactions are listed in the full product information.",
    "Counsel the patient on the expected benefits and the common adverse effects before the first dose.",
    "Report suspected adverse reactions through the national reporting scheme.",
    "Safety in pregnancy has not been established; weigh the benefit against the risk.",
    "Check adherence and technique before increasing the dose.",
]
# Research abstracts (structured, with numbers), the register of the biomedical literature.
ABSTRACT_BACKGROUND = [
    "Background: {cond} is a frequent cause of hospital attendance, and the best initial treatment remains uncertain.",
    "Introduction: the evidence for {drug_l} in {cond} comes mostly from small observational studies.",
    "Objective: to estimate the effect of {drug_l} on outcomes in adults with {cond}.",
    "Background: guidelines differ on whether {drug_l} should be offered routinely to people with {cond}.",
    "Aims: we assessed whether early {drug_l} improves recovery from {cond}.",
    "Context: practice varies widely in the management of {cond} in primary care.",
]
ABSTRACT_METHODS = [
    "Methods: we conducted a randomised, double-blind, placebo-controlled trial at {sites} centres and enrolled {n} adults.",
    "Methods: in this retrospective cohort study, we identified {n} patients from electronic records at {sites} hospitals.",
    "Design: pragmatic open-label trial; {n} participants were allocated one to one to {drug_l} or usual care.",
    "Methods: a prospective registry of {n} consecutive patients admitted to {sites} units was analysed.",
    "We searched four databases and pooled {sites} randomised trials including {n} participants in a meta-analysis.",
    "Setting and participants: {n} adults recruited from {sites} general practices were followed for twelve months.",
]
ABSTRACT_OUTCOME = [
    "The primary outcome was {outcome} at {weeks} weeks.",
    "The main outcome measure was {outcome}.",
    "Our primary end point was {outcome} within {weeks} weeks of enrolment.",
    "We compared {outcome} between groups using a Cox model.",
    "Outcomes were assessed by investigators unaware of group allocation; the primary one was {outcome}.",
    "The prespecified primary outcome was {outcome}.",
]
ABSTRACT_OUTCOMES = [
    "hospital readmission",
    "all-cause mortality",
    "time to symptom resolution",
    "treatment failure",
    "length of hospital stay",
    "a composite of death or admission to intensive care",
    "change in a validated symptom score",
]
ABSTRACT_RESULTS = [
    "Results: the primary outcome occurred in {p1}% of the treatment group and {p2}% of the control group (hazard ratio {ratio}; 95% CI {lo} to {hi}).",
    "Results: {n_events} events were recorded; the adjusted odds ratio was {ratio} (95% confidence interval {lo} to {hi}).",
    "Findings: compared with usual care, the intervention changed the primary outcome from {p2}% to {p1}% (relative risk {ratio}).",
    "Median follow-up was {weeks} weeks; the risk ratio for the primary outcome was {ratio} ({lo} to {hi}).",
    "The rate of the primary outcome was {p1} versus {p2} per 100 patient-years.",
    "Results: of the participants, {p1}% in the treated group met the primary end point, against {p2}% in the comparison group.",
]
ABSTRACT_SAFETY = [
    "Serious adverse events were similar in the two groups.",
    "Adverse events led to discontinuation in {p3}% of treated participants.",
    "No new safety signals were identified.",
    "Minor adverse effects, mostly gastrointestinal, were more common with active treatment.",
    "Two deaths occurred, neither judged to be related to the study drug.",
    "Loss to follow-up was below {p3}% in both arms.",
]
ABSTRACT_CONCLUSIONS = [
    "Conclusions: in adults with {cond}, {drug_l} did not improve the primary outcome.",
    "Conclusion: {drug_l} modestly reduced {outcome} and appears safe, but larger trials are needed.",
    "Interpretation: these findings support current guidance and do not justify a change in practice.",
    "Conclusions: the benefit was confined to patients with more severe disease at baseline.",
    "Our results suggest that routine use of {drug_l} in {cond} should be reconsidered.",
    "Conclusions: the effect was smaller than expected, and residual confounding cannot be excluded.",
]
ABSTRACT_TITLES = [
    "{drug} for {cond}: a randomised trial.",
    "Outcomes of {cond} treated with {drug_l}: a cohort study.",
    "Early {drug_l} versus usual care in {cond}.",
    "Effect of {drug_l} on recovery from {cond}.",
    "{drug} in adults with {cond}: a systematic review and meta-analysis.",
    "Treatment of {cond} in routine practice: a registry analysis.",
]
ABSTRACT_VOCAB = {
    "sites": [str(n) for n in range(3, 42, 2)],
    "n": [str(n) for n in (128, 214, 356, 482, 640, 815, 1024, 1290, 2046, 3310, 4875, 7200, 9641)],
    "weeks": ["4", "6", "8", "12", "24", "26", "52"],
    "p1": [f"{v:.1f}" for v in (4.2, 6.8, 9.1, 11.5, 14.0, 17.3, 21.6, 25.9, 30.4)],
    "p2": [f"{v:.1f}" for v in (5.9, 8.4, 10.2, 13.7, 15.8, 19.5, 24.1, 28.8, 33.0)],
    "p3": ["1.2", "2.5", "3.1", "4.8", "6.0", "7.4"],
    "ratio": ["0.71", "0.78", "0.84", "0.91", "0.96", "1.02", "1.08", "0.65"],
    "lo": ["0.52", "0.58", "0.63", "0.70", "0.77", "0.81"],
    "hi": ["0.98", "1.04", "1.12", "1.19", "1.27", "1.33"],
    "n_events": ["87", "143", "212", "305", "461", "598"],
}


GENERAL_MORE: dict[str, list[list[str]]] = {
    "gardening": [
        [
            "The tomatoes on the balcony have finally started to turn red.",
            "This spring I dug a small vegetable patch at the bottom of the garden.",
            "Our allotment was a jungle of weeds when we took it over in {month}.",
        ],
        [
            "I water early in the morning, before the sun gets too strong, so less of it evaporates.",
            "A thick layer of mulch kept the soil damp through the dry spell.",
            "The slugs ate half the lettuces before I thought of putting copper tape around the beds.",
            "Beans are the easiest crop I have grown, and they seem to thrive on neglect.",
            "A neighbour gave me a box of seedlings she had grown on her windowsill.",
            "The compost heap took almost a year to become something I could dig into the beds.",
            "Planting marigolds between the rows seems to keep some of the pests away.",
        ],
        [
            "There is nothing quite like eating something you grew yourself.",
            "Next year I want to try potatoes in sacks.",
            "It is slow work, but it gives me a reason to be outside every evening.",
        ],
    ],
    "pets": [
        [
            "We adopted a scruffy terrier from the shelter in {month}.",
            "Our old cat has decided that the laundry basket is now her bed.",
            "My son has been asking for a rabbit for years, and this {day} we finally gave in.",
        ],
        [
            "The first week was chaos, with chewed shoes and muddy paw prints on every floor.",
            "She follows me from room to room and sits by the door whenever I leave.",
            "A long walk in the park every morning has made us both calmer.",
            "The vet suggested a smaller portion at dinner and more play during the day.",
            "He learnt to sit within a day, but coming back when called is still a work in progress.",
            "The neighbours' children come over after school just to say hello to him.",
            "We moved the food bowl to the kitchen, which ended the nightly crunching noises in the hall.",
        ],
        [
            "The house feels much livelier now.",
            "I cannot remember what our evenings were like before.",
            "It has been more work than I expected, and worth every minute.",
        ],
    ],
    "commuting": [
        [
            "I have been cycling to work since the start of {month}.",
            "The bus to the office now takes twice as long because of the roadworks.",
            "Working from home two days a week has changed how I think about the journey.",
        ],
        [
            "The route along the canal is longer but far quieter than the main road.",
            "I keep a book in my bag, so a late train is no longer a disaster.",
            "A colleague and I started sharing a car, which halves the cost of parking.",
            "On wet days the waterproof trousers are the difference between misery and mild annoyance.",
            "Leaving fifteen minutes earlier avoids the worst of the crowds on the platform.",
            "The new cycle lane opened last month, and it already feels busier than the road.",
            "I listen to podcasts on the way in and music on the way home.",
        ],
        [
            "I arrive more awake than I used to, which surprised me.",
            "On a sunny morning it is the best part of my day.",
            "It is not glamorous, but it works.",
        ],
    ],
}


OPINION_POOLS = {
    "openers": OPINION_OPENERS,
    "review": OPINION_REVIEW,
    "principles": OPINION_PRINCIPLES,
    "arguments": OPINION_ARGUMENTS,
    "apply": OPINION_APPLY,
    "closers": OPINION_CLOSERS,
}
STATUTE_MORE.update(
    {
        "Charitable solicitations": [
            "A charitable organisation that solicits contributions in this State shall register with the Secretary of State before any solicitation begins.",
            "A professional fundraiser shall disclose, before accepting a contribution, the name of the charity and the share of each gift it will receive.",
            "Each registered organisation shall file an annual financial report within {n_months} months after the end of its fiscal year.",
            "A solicitation that misrepresents the purpose for which contributions will be used is a deceptive practice.",
            "The Attorney General may suspend a registration for failure to file a required report.",
        ],
        "Dog ownership": [
            "The owner of a dog that bites a person who is lawfully in a public or private place is liable for the resulting damages.",
            "It is a defence that the person bitten was provoking the dog at the time.",
            "A dog shall be kept on a leash not longer than two metres in any public park unless the area is signposted as an exercise area.",
            "An animal control officer may seize a dog that is found at large and return it to its owner on payment of the impound fee.",
            "A dog that has bitten a person shall be confined and observed for ten days.",
        ],
        "Home improvement contracts": [
            "A home improvement contract for more than {fine_small} shall be in writing and signed by both the contractor and the homeowner.",
            "The contract shall state the approximate start and completion dates and a description of the work and materials.",
            "The homeowner may cancel the contract by written notice before midnight of the third business day after signing.",
            "A contractor shall not demand a deposit exceeding one third of the contract price before work begins.",
            "A contractor who abandons a job without justification is liable for the homeowner's reasonable cost of completion.",
        ],
    }
)
CASE_MORE += [
    (
        "marketing agency",
        "p",
        "unpaid invoices and the implied duty of cooperation",
        "The client refused to approve any campaign materials for four months and then withheld payment because no campaign had run.",
        "the client could not rely on the absence of a campaign that its own refusal to cooperate had prevented",
        "The court held that a party may not take advantage of its own failure to do what was necessary for the other to perform.",
    ),
    (
        "shipping company",
        "d",
        "demurrage under a charterparty",
        "The vessel waited at anchor for eleven days because the port was congested, and the owners claimed demurrage for the whole period.",
        "laytime did not begin until a valid notice of readiness was given, which could not happen before the vessel reached the berth",
        "The court applied the settled rule that a notice of readiness given before the vessel has arrived at the agreed destination is invalid.",
    ),
    (
        "university",
        "d",
        "breach of an employment contract",
        "A researcher claimed that the university had promised her a permanent post in a recruitment letter.",
        "the letter was a statement of intention and not a contractual promise of permanent employment",
        "The court found that the language of hope and expectation in the letter fell short of the certainty needed for a binding term.",
    ),
]
OPINION_REVIEW += [
    "Questions of mixed law and fact attract deference unless an extricable error of law is shown.",
    "The court will not interfere with an exercise of discretion merely because it would have decided differently.",
    "The sufficiency of the pleadings is a question of law reviewed afresh.",
]
OPINION_PRINCIPLES += [
    "A contract should be read so as to avoid making any of its terms surplus.",
    "Commercial common sense is a guide to meaning only where the words allow more than one reading.",
    "A party who wishes to exclude liability for negligence must say so in clear terms.",
    "Subsequent conduct is not ordinarily a guide to what the parties meant at the time they contracted.",
    "A term is not unreasonable merely because it operates harshly in the events that happened.",
    "Where the parties have set out a complete code for a subject, the court will not supplement it with implied terms.",
]
OPINION_ARGUMENTS += [
    "The appellant says that the judge was wrong to find the clause unambiguous.",
    "The respondent contends that the appeal raises no point of principle.",
    "Counsel argued that the relevant correspondence was written on a without-prejudice basis.",
    "The appellant criticises the judge's approach to the expert evidence.",
]
OPINION_CLOSERS += [
    "The application for permission to cross-appeal is refused.",
    "We would invite written submissions on the form of the order.",
    "The stay granted pending appeal is lifted.",
]
ABSTRACT_BACKGROUND += [
    "Rationale: small trials suggested a benefit of {drug_l} in {cond}, but they were underpowered.",
    "Background: adherence to treatment in {cond} is poor, and simple strategies to improve it are needed.",
    "Purpose: to describe outcomes of {cond} in older adults treated in routine practice.",
]
ABSTRACT_METHODS += [
    "Methods: a cluster-randomised trial in {sites} practices compared a nurse-led review with usual care in {n} patients.",
    "Methods: we linked primary care and hospital records for {n} adults and used propensity score matching.",
    "A nested case-control study within a cohort of {n} patients was performed across {sites} sites.",
]
ABSTRACT_RESULTS += [
    "Results: {n_events} participants reached the primary end point; the between-group difference was not significant (ratio {ratio}).",
    "After adjustment for age, sex and comorbidity, the association was weaker (hazard ratio {ratio}; {lo} to {hi}).",
    "Results: in the matched cohort, {p1}% of treated and {p2}% of untreated patients experienced the outcome.",
]
ABSTRACT_CONCLUSIONS += [
    "Conclusions: a simple intervention reduced {outcome} in {cond}, and its wider use should be evaluated.",
    "Interpretation: the findings are hypothesis-generating and need confirmation in a randomised setting.",
    "Conclusions: treatment with {drug_l} was associated with modest benefit and few adverse events.",
]
LEAFLET_EXTRAS += [
    "This medicine may make you feel drowsy; do not drive or operate machinery if it affects you.",
    "Avoid alcohol while taking this medicine unless your doctor says otherwise.",
    "Bring this leaflet with you if you need to go to hospital.",
]
DRUGINFO_NOTES += [
    "Measure blood pressure and heart rate at each dose change.",
    "Avoid co-prescription with other drugs that share the same adverse effect profile.",
    "Take a full medication history, including over-the-counter products, before prescribing.",
]
CLAUSE_PREFACE += [
    "This Section governs dealings between {ca}, the {A}, and {cb}, the {B}.",
    "Where this Section refers to the {A} it means {ca}; where it refers to the {B} it means {cb}.",
    "The parties to this Section are {ca} and {cb}, acting as {A} and {B} respectively.",
]


NOTE_POOLS = {
    "heads": NOTE_HEADS + NOTE_HEADS_MORE,
    "subjective": NOTE_SUBJECTIVE,
    "objective": NOTE_OBJECTIVE,
    "assessment": NOTE_ASSESSMENT,
    "plan": NOTE_PLAN,
    "followup": NOTE_FOLLOWUP,
}
DISCHARGE_POOLS = {
    "heads": DISCHARGE_HEADS,
    "reason": DISCHARGE_REASON,
    "initial": DISCHARGE_INITIAL,
    "stay": DISCHARGE_STAY,
    "meds": DISCHARGE_MEDS,
    "gp": DISCHARGE_GP,
}
LEAFLET_POOLS = {
    "heads": LEAFLET_HEADS,
    "klass": LEAFLET_CLASS,
    "uses": LEAFLET_USES,
    "avoid": LEAFLET_AVOID,
    "dose": LEAFLET_DOSE,
    "side": LEAFLET_SIDE,
    "extras": LEAFLET_EXTRAS,
}
ABSTRACT_POOLS = {
    "titles": ABSTRACT_TITLES,
    "background": ABSTRACT_BACKGROUND,
    "methods": ABSTRACT_METHODS,
    "outcome": ABSTRACT_OUTCOME,
    "results": ABSTRACT_RESULTS,
    "safety": ABSTRACT_SAFETY,
    "conclusions": ABSTRACT_CONCLUSIONS,
}


# ============================================================== a group's pools


def pools(group: str) -> dict:
    """Every pool the passage makers draw from, cut to `group`."""
    drugs = take_drugs(group)
    return {
        "group": group,
        "clauses": take_keys({**CLAUSES, **CLAUSES_MORE}, group),
        "clause_preface": take(CLAUSE_PREFACE, group),
        "preambles": take(CONTRACT_PREAMBLES, group),
        "recitals": take(CONTRACT_RECITALS, group),
        "kinds": take(CONTRACT_KINDS, group),
        "dates": take(CONTRACT_DATES, group),
        "party_pairs": take(PARTY_PAIRS, group),
        "company": (take(COMPANY_A, group), take(COMPANY_B, group), take(COMPANY_SUFFIX, group)),
        "legal_vocab": take_vocab(LEGAL_VOCAB, group),
        "statutes": take_keys({**STATUTE_TOPICS, **STATUTE_MORE}, group),
        "statute_vocab": take_vocab(STATUTE_VOCAB, group),
        "statute_openers": STATUTE_OPENERS,  # "(a)".."(f)": markers, not frames
        "statute_tails": take(STATUTE_TAILS, group),
        "statute_definitions": take(STATUTE_DEFINITIONS, group),
        "statute_terms": take(STATUTE_TERMS, group),
        "codes": take(CODES, group),
        "case_vocab": take_vocab(CASE_VOCAB, group),
        "scenarios": take(CASE_SCENARIOS + CASE_MORE, group),
        "case_extra": take(CASE_EXTRA, group),
        "caption_suffix": take(CASE_CAPTION_SUFFIX, group),
        "case_plaintiff": take(CASE_PLAINTIFF, group),
        "case_below": take(CASE_BELOW, group),
        "case_held": take(CASE_HELD, group),
        "outcomes": {True: take(OUTCOMES_AGREE, group), False: take(OUTCOMES_DISAGREE, group)},
        "opinion": take_each(OPINION_POOLS, group),
        "judges": take(JUDGES, group),
        "conditions": take(CONDITIONS + CONDITIONS_MORE, group),
        "drugs": drugs,
        "first": {sex: take(names, group) for sex, names in FIRST.items()},
        "med_vocab": take_vocab(MED_VOCAB, group),
        "note": take_each(NOTE_POOLS, group),
        "discharge": take_each(DISCHARGE_POOLS, group),
        "leaflet": take_each(LEAFLET_POOLS, group),
        "druginfo": {"layouts": take(DRUGINFO_LAYOUTS, group), "notes": take(DRUGINFO_NOTES, group)},
        "abstract": take_each(ABSTRACT_POOLS, group),
        "abstract_vocab": dict(take_vocab(ABSTRACT_VOCAB, group), outcome=take(ABSTRACT_OUTCOMES, group)),
        "general": take_keys({**GENERAL_TOPICS, **GENERAL_MORE}, group),  # whole topics, with their frames
        "general_vocab": take_vocab(GENERAL_VOCAB, group),
    }


def pick(rng: random.Random, pool: list[str], values: dict[str, str]) -> str:
    """One frame of `pool`, filled from `values` (format ignores the keys a frame does not use)."""
    return rng.choice(pool).format(**values)


def _strings(tree) -> list[str]:
    if isinstance(tree, str):
        return [tree]
    if isinstance(tree, dict):
        return [s for k, v in tree.items() for s in _strings(k) + _strings(v)]
    if isinstance(tree, (list, tuple)):
        return [s for item in tree for s in _strings(item)]
    return []


def held_out_strings(min_words: int = 5) -> dict[str, list[str]]:
    """What the held-out group owns, for checking that training never contains it: `frames`, each held-out
    string's literal runs of at least `min_words` words between its {slots}; `names`, the held-out people,
    companies, judges and medicines (as whole words)."""
    p = pools("heldout")
    shared = set(_strings(STATUTE_OPENERS)) | {
        s for k in UNSPLIT_VOCAB for v in (MED_VOCAB, CASE_VOCAB) for s in v.get(k, [])
    }
    frames = set()
    for text in _strings(p):
        if text in shared:
            continue
        for run in re.split(r"\{[^}]*\}", text):
            run = run.strip(" .,;:")
            if len(run.split()) >= min_words:
                frames.add(run)
    first, second, _ = p["company"]
    names = first + p["case_vocab"]["surname"] + p["judges"] + [n for v in p["first"].values() for n in v]
    names += [d[0] for d in p["drugs"]]
    return {"frames": sorted(frames), "names": sorted(set(names))}


# ============================================================== legal passage makers


def _company(rng: random.Random, p: dict) -> str:
    first, second, suffix = p["company"]
    return f"{rng.choice(first)} {rng.choice(second)} {rng.choice(suffix)}"


def _clause(rng: random.Random, p: dict, title: str, number: str, fixed: dict) -> str:
    """A numbered section of clause type `title`; now and then one of its body sentences comes from another type
    of the same group, as drafters borrow across clauses (so training meets sentences in new company)."""
    opening, body, closing = p["clauses"][title]
    if rng.random() < 0.25:
        other = rng.choice([t for t in sorted(p["clauses"]) if t != title])
        body = body + [rng.choice(p["clauses"][other][1])]
    return compose(rng, f"{number} {title}.", clause_slots([opening, body, closing]), p["legal_vocab"], fixed)


def _parties(rng: random.Random, p: dict) -> dict:
    a, b = rng.choice(p["party_pairs"])
    return {
        "A": a,
        "B": b,
        "ca": _company(rng, p),
        "cb": _company(rng, p),
        "deliverable": rng.choice(p["legal_vocab"]["deliverable"]),
    }


def legal_clause(rng: random.Random, p: dict) -> str:
    """One numbered contract section, sometimes naming the parties first."""
    fixed = _parties(rng, p)
    title = rng.choice(sorted(p["clauses"]))
    text = _clause(rng, p, title, f"{rng.randint(2, 24)}.{rng.randint(1, 9)}", fixed)
    if rng.random() < 0.3:
        number, rest = text.split(" ", 1)
        title_part, body = rest.split(". ", 1)
        text = f"{number} {title_part}. {pick(rng, p['clause_preface'], fixed)} {body}"
    return text


def legal_contract(rng: random.Random, p: dict) -> str:
    """The opening of a contract: preamble, recitals, then two to four sections of different types, so that
    sentences of different clause types meet in one document (as they do in a real agreement)."""
    fixed = _parties(rng, p)
    kind = rng.choice(p["kinds"])
    values = dict(fixed, kind=kind, kind_upper=kind.upper(), date=rng.choice(p["dates"]))
    parts = [pick(rng, p["preambles"], values)]
    parts += [pick(rng, [r], values) for r in rng.sample(p["recitals"], rng.randint(0, 2))]
    titles = rng.sample(sorted(p["clauses"]), rng.randint(2, min(4, len(p["clauses"]))))
    parts += [_clause(rng, p, t, f"{i}.", fixed) for i, t in enumerate(titles, 1)]
    return " ".join(parts)


def _statute_section(rng: random.Random, p: dict, topic: str) -> str:
    pool = p["statutes"][topic]
    k = rng.randint(min(2, len(pool)), min(5, len(pool)))
    picked = sorted(rng.sample(range(len(pool)), k))
    values = {
        "term": rng.choice(p["statute_terms"]),
        "n": str(rng.randint(100, 999)),
        "code": rng.choice(p["codes"]),
    }
    sentences = [fill(rng, pool[j], p["statute_vocab"], {}) for j in picked]
    if rng.random() < 0.5:
        sentences.append(pick(rng, p["statute_definitions"], values))
    body = " ".join(f"{p['statute_openers'][i]} {s}" for i, s in enumerate(sentences))
    return f"§ {rng.randint(12, 99)}-{rng.randint(101, 999)}. {topic}. {body}"


def legal_statute(rng: random.Random, p: dict) -> str:
    """One or two statute sections (different topics), with a source note or cross-reference at times."""
    topics = rng.sample(sorted(p["statutes"]), rng.choice([1, 1, 2]))
    text = " ".join(_statute_section(rng, p, t) for t in topics)
    if rng.random() < 0.6:
        y = rng.randint(1987, 2023)
        values = {
            "y": str(y),
            "y2": str(y + rng.randint(1, 6)),
            "ch": str(rng.randint(10, 400)),
            "s": str(rng.randint(1, 30)),
            "code": rng.choice(p["codes"]),
            "n": str(rng.randint(100, 999)),
        }
        text += " " + pick(rng, p["statute_tails"], values)
    return text


def _case_facts(rng: random.Random, p: dict) -> dict:
    plaintiff, winner, claim, background, holding, reasoning = rng.choice(p["scenarios"])
    vocab = p["case_vocab"]
    agree = rng.random() < 0.5  # did the trial court reach the same result as the appeal court?
    winner_below = winner if agree else {"p": "d", "d": "p"}[winner]
    return {
        "plaintiff": plaintiff,
        "claim": claim,
        "background": background,
        "holding": holding,
        "reasoning": reasoning,
        "agree": agree,
        "court": rng.choice(vocab["court"]),
        "below": rng.choice(vocab[f"procedural_for_{winner_below}"]),
        "judge": rng.choice(p["judges"]),
        "caption": f"{rng.choice(vocab['surname'])} v. {rng.choice(vocab['surname'])} {rng.choice(p['caption_suffix'])}",
    }


def legal_case(rng: random.Random, p: dict) -> str:
    """A case summary: caption, parties, facts, procedural history, holding, reasoning, outcome."""
    f = _case_facts(rng, p)
    vocab = dict(p["case_vocab"], years_contract=["three years", "five years", "two years", "ten years"])
    parts = [
        f"{f['caption']}, {f['court']} ({rng.choice(vocab['year'])}).",
        pick(rng, p["case_plaintiff"], f),
        f["background"],
        pick(rng, p["case_below"], f),
        pick(rng, p["case_held"], f),
        f["reasoning"],
    ]
    parts += [fill(rng, t, vocab, {}) for t in rng.sample(p["case_extra"], rng.randint(0, 2))]
    parts.append(rng.choice(p["outcomes"][f["agree"]]))
    return " ".join(parts)


def legal_opinion(rng: random.Random, p: dict) -> str:
    """Court reasoning: the body of an appellate opinion, with the standard of review, the governing principles,
    the parties' arguments and their application to the facts, in varying order and length."""
    f = _case_facts(rng, p)
    o = p["opinion"]
    parts = [pick(rng, o["openers"], f), f["background"], pick(rng, p["case_below"], f)]
    parts += rng.sample(o["review"], rng.randint(1, 2))
    args = rng.sample(o["arguments"], rng.randint(1, 2))
    principles = rng.sample(o["principles"], rng.randint(1, 3))
    parts += args + principles if rng.random() < 0.5 else principles + args
    parts += [f["reasoning"], pick(rng, o["apply"], f)]
    parts += rng.sample(o["closers"], rng.randint(0, 2))
    parts.append(rng.choice(p["outcomes"][f["agree"]]))
    return " ".join(parts)


# ============================================================== medical passage makers


def _condition_vocab(rng: random.Random, p: dict) -> tuple[dict, dict]:
    cond = rng.choice(p["conditions"])
    temp, hr, rr, spo2 = cond["vitals"]
    sex = rng.choice(p["med_vocab"]["sex"])
    fixed = {
        "sex": sex,
        "dx": rng.choice(cond["dx"]),
        "complaint": rng.choice(cond["complaint"]),
        "temp": rng.choice(temp),
        "hr": rng.choice(hr),
        "rr": rng.choice(rr),
        "spo2": rng.choice(spo2),
        "exam": rng.choice(cond["exam"]),
        "name": f"{rng.choice(p['first'][sex])} {rng.choice(p['case_vocab']['surname'])}",
        "plan": rng.choice(cond["plan"]),
    }
    return cond, fixed


def medical_note(rng: random.Random, p: dict) -> str:
    """A clinical note around one coherent scenario: history, findings, tests, assessment, plan."""
    cond, fixed = _condition_vocab(rng, p)
    n, v = p["note"], p["med_vocab"]
    slots = [
        (n["subjective"], 1),
        (v["history"], 2),
        (v["living"], 1),
        (n["objective"], 1),
        (cond["tests"], 3),
        (n["assessment"], 1),
        (n["plan"], 1),
        (v["followup"], 1),
    ]
    text = compose(rng, rng.choice(n["heads"]), slots, v, fixed)
    if rng.random() < 0.35:  # a later entry in the same record: the notes users bring run over several visits
        course = " ".join(rng.sample(cond["course"], len(cond["course"])))
        values = dict(fixed, duration=rng.choice(v["duration"]), course=course)
        text += " " + pick(rng, n["followup"], values) + " " + pick(rng, n["plan"], fixed)
    return text


def medical_discharge(rng: random.Random, p: dict) -> str:
    """A discharge summary: reason for admission, tests, management, hospital course, medicines, follow-up."""
    cond, fixed = _condition_vocab(rng, p)
    d, v = p["discharge"], p["med_vocab"]
    meds = rng.sample(cond["meds"], len(cond["meds"]))
    fixed = dict(fixed, meds=" and ".join(meds), first_med=meds[0], age=rng.choice(v["age"]))
    fixed["followup"] = rng.choice(v["followup"])
    slots = [
        (d["reason"], 1),
        (cond["tests"], 2),
        (d["initial"], 1),
        (cond["course"] + v["generic_course"], 3),
        (d["stay"], 1),
        (d["meds"], 1),
        (d["gp"], 1),
    ]
    return compose(rng, pick(rng, d["heads"], fixed), slots, v, fixed)


def _drug_values(drug: tuple) -> dict:
    name, klass, uses, side, avoid, dose, advice = drug
    bare = klass.split(" ", 1)[1] if klass.startswith(("a ", "an ")) else klass
    return {
        "name": name,
        "klass": klass,
        "klass_bare": bare,
        "uses": uses,
        "side": side,
        "avoid": avoid,
        "dose": dose,
        "advice": advice,
    }


def medical_leaflet(rng: random.Random, p: dict) -> str:
    """A patient leaflet for one medicine, its sections in the usual order."""
    values = _drug_values(rng.choice(p["drugs"]))
    lf = p["leaflet"]
    parts = [pick(rng, lf[k], values) for k in ("heads", "klass", "uses", "avoid", "dose", "side")]
    parts.append(values["advice"])
    parts += rng.sample(lf["extras"], rng.randint(1, 3))
    return " ".join(parts)


def medical_druginfo(rng: random.Random, p: dict) -> str:
    """Prescribing information for one to three medicines (the professional register), with monitoring notes."""
    drugs = rng.sample(p["drugs"], rng.choice([1, 1, 2, 3]))
    parts = []
    for drug in drugs:
        values = _drug_values(drug)
        parts.append(f"{values['name']}.")
        parts += [frame.format(**values) for frame in rng.choice(p["druginfo"]["layouts"])]
        parts += rng.sample(p["druginfo"]["notes"], rng.randint(1, 2))
    return " ".join(parts)


def medical_abstract(rng: random.Random, p: dict) -> str:
    """A structured research abstract about a condition and a medicine, with made-up figures."""
    cond = rng.choice(p["conditions"])["dx"][0].split(",")[0]
    drug = _drug_values(rng.choice(p["drugs"]))["name"]
    values = {k: rng.choice(v) for k, v in p["abstract_vocab"].items()}
    values.update(cond=cond, drug=drug, drug_l=drug[0].lower() + drug[1:])
    a = p["abstract"]
    parts = [pick(rng, a["titles"], values), pick(rng, a["background"], values), pick(rng, a["methods"], values)]
    parts += [pick(rng, a["outcome"], values), pick(rng, a["results"], values)]
    parts += [pick(rng, [s], values) for s in rng.sample(a["safety"], rng.randint(0, 2))]
    parts.append(pick(rng, a["conclusions"], values))
    return " ".join(parts)


# ============================================================== general passage maker


def general_passage(rng: random.Random, p: dict) -> str:
    """An everyday first-person paragraph on one topic."""
    topic = rng.choice(sorted(p["general"]))
    openers, bodies, closers = p["general"][topic]
    return compose(rng, "", [(openers, 1), (bodies, 4), (closers, 1)], p["general_vocab"], {})


LEGAL_MAKERS = [legal_clause, legal_contract, legal_statute, legal_case, legal_opinion]
MEDICAL_MAKERS = [medical_note, medical_discharge, medical_leaflet, medical_druginfo, medical_abstract]


# ============================================================== instruction and chat data

LEGAL_CONCEPTS = [
    # (name, what it is, why it matters, an example)
    (
        "force majeure clause",
        "A force majeure clause excuses a party from performing its obligations when events beyond its reasonable control, such as natural disasters, war or government orders, make performance impossible or impracticable.",
        "It allocates the risk of extraordinary events in advance, so that neither party is liable for a failure it could not prevent.",
        "Courts usually read the list of events narrowly, so a clause that names only natural disasters may not cover a pandemic.",
    ),
    (
        "indemnification clause",
        "An indemnification clause obliges one party to compensate the other for specified losses, typically third-party claims caused by the indemnifying party's breach or negligence.",
        "It shifts the financial risk of particular claims to the party best placed to control them.",
        "A software vendor commonly indemnifies its customer against claims that the software infringes a third party's patent.",
    ),
    (
        "limitation of liability clause",
        "A limitation of liability clause caps the amount one party can recover from the other and usually excludes indirect or consequential damages.",
        "It makes a party's maximum exposure predictable and is often linked to the fees paid under the contract.",
        "Many clauses cap liability at twelve months' fees but exclude fraud, death and personal injury from the cap.",
    ),
    (
        "confidentiality clause",
        "A confidentiality clause requires the receiving party to keep the other party's non-public information secret and to use it only for the purposes of the agreement.",
        "It protects trade secrets and business information that would lose value if disclosed.",
        "Standard exceptions cover information that is already public or that must be disclosed by law.",
    ),
    (
        "governing law clause",
        "A governing law clause states which jurisdiction's law will be used to interpret the contract and resolve disputes about it.",
        "It removes uncertainty about which legal rules apply when the parties are in different places.",
        "A clause may choose the law of England and Wales even if neither party is based there.",
    ),
    (
        "termination for convenience clause",
        "A termination for convenience clause allows a party to end the contract without having to show any breach, usually by giving a period of notice.",
        "It gives flexibility to exit a long relationship when business needs change.",
        "Some courts still require the right to be exercised in good faith.",
    ),
    (
        "arbitration clause",
        "An arbitration clause requires disputes to be decided by a private arbitrator or tribunal instead of a public court.",
        "Arbitration can be faster, confidential and easier to enforce across borders than a court judgment.",
        "The clause normally names the rules, the seat of arbitration and the number of arbitrators.",
    ),
    (
        "entire agreement clause",
        "An entire agreement clause states that the written contract contains the whole agreement between the parties and supersedes earlier negotiations and statements.",
        "It prevents a party from relying on promises that were never written into the final contract.",
        "It generally does not protect a party that made a fraudulent misrepresentation.",
    ),
    (
        "severability clause",
        "A severability clause provides that if one provision of the contract is held invalid, the rest of the contract remains in force.",
        "It prevents a single defective term from bringing down the whole agreement.",
        "A court may strike an unenforceable non-compete while enforcing the confidentiality obligations in the same contract.",
    ),
    (
        "non-compete clause",
        "A non-compete clause restricts a party, often an employee or a seller of a business, from competing with the other party for a period of time within a defined area.",
        "It protects goodwill and confidential information, but it is enforceable only if reasonable in scope, duration and geography.",
        "Several jurisdictions now restrict or ban non-competes for ordinary employees.",
    ),
    (
        "assignment clause",
        "An assignment clause governs whether a party may transfer its rights or obligations under the contract to someone else.",
        "It lets each party control who it ends up doing business with.",
        "A common carve-out permits assignment to a successor in a merger without consent.",
    ),
    (
        "warranty",
        "A warranty is a contractual promise that a statement of fact is true or that goods or services will meet a stated standard.",
        "If a warranty is breached, the other party can claim damages even if the breach was innocent.",
        "A seller may warrant that a product will be free from defects for ninety days.",
    ),
    (
        "liquidated damages clause",
        "A liquidated damages clause fixes in advance the amount payable if a particular breach occurs, such as late completion of a project.",
        "It avoids the cost and uncertainty of proving actual losses.",
        "If the amount is extravagant compared with the likely loss, a court may treat it as an unenforceable penalty.",
    ),
    (
        "notice clause",
        "A notice clause sets out how formal communications under the contract, such as notices of breach or termination, must be given and when they are treated as received.",
        "Following it exactly matters, because a notice sent the wrong way may be ineffective.",
        "A clause might require notices by courier to a named address, with a copy by email.",
    ),
    (
        "waiver clause",
        "A waiver clause, often called a no-waiver clause, provides that a party does not give up a right merely by failing or delaying to enforce it.",
        "It lets a party be flexible on one occasion without losing the right to insist on strict performance later.",
        "A supplier that accepts one late payment can still charge interest on the next one.",
    ),
    (
        "change of control clause",
        "A change of control clause gives a party rights, typically to consent or to terminate, if ownership or control of the other party changes.",
        "It protects a party from suddenly finding itself in a relationship with a competitor or an unknown owner.",
        "Such clauses are reviewed carefully during mergers and acquisitions, because they can allow key customers to walk away.",
    ),
    (
        "survival clause",
        "A survival clause lists the obligations that continue to apply after the contract ends, such as confidentiality, indemnities and payment of accrued fees.",
        "It avoids arguments about whether those obligations ended with the contract.",
        "A clause may provide that confidentiality survives for five years after termination.",
    ),
    (
        "counterparts clause",
        "A counterparts clause allows the contract to be signed in separate copies, each signed by one or more parties, which together form one agreement.",
        "It makes signing practical when the parties are in different places.",
        "Most counterparts clauses also confirm that electronically delivered signatures are binding.",
    ),
    (
        "statute of limitations",
        "A statute of limitations is a law that sets the maximum time after an event within which legal proceedings may be started.",
        "It protects defendants from stale claims and encourages claimants to act promptly.",
        "In many places a claim on a written contract must be brought within about six years of the breach.",
    ),
    (
        "consideration",
        "Consideration is something of value that each party gives or promises in exchange for the other's promise, and it is required for a contract to be binding in common law systems.",
        "It distinguishes an enforceable bargain from a gratuitous promise.",
        "A promise to pay for a service is consideration for the promise to provide it.",
    ),
    (
        "promissory estoppel",
        "Promissory estoppel is a doctrine that can make a promise enforceable, even without consideration, when the other party reasonably relied on it to their detriment.",
        "It prevents injustice where someone changed their position because of a clear promise.",
        "A landlord who promised to reduce rent may be prevented from claiming the full rent for the period the tenant relied on that promise.",
    ),
    (
        "breach of contract",
        "A breach of contract occurs when a party fails to perform an obligation under the contract without a lawful excuse.",
        "The injured party may claim damages and, for a serious breach, may be entitled to terminate.",
        "Delivering goods that do not match the agreed specification is a common example.",
    ),
    (
        "material breach",
        "A material breach is a failure to perform that goes to the root of the contract and substantially deprives the other party of what it bargained for.",
        "It usually entitles the innocent party to terminate as well as claim damages.",
        "Contracts often give the breaching party a cure period before termination for material breach is allowed.",
    ),
    (
        "fiduciary duty",
        "A fiduciary duty is an obligation to act loyally and in the best interests of another person, such as the duty a director owes to a company.",
        "It prohibits conflicts of interest and secret profits.",
        "A trustee who buys trust property for himself without approval breaches his fiduciary duty.",
    ),
    (
        "summary judgment",
        "Summary judgment is a court decision made without a full trial because there is no genuine dispute about the material facts and one party is entitled to judgment as a matter of law.",
        "It saves time and cost when a trial would serve no purpose.",
        "A defendant may obtain summary judgment by showing the claim is time-barred.",
    ),
    (
        "injunction",
        "An injunction is a court order requiring a party to do, or to stop doing, a particular act.",
        "It is used when money damages would not adequately remedy the harm.",
        "A company may seek an interim injunction to stop a former employee from using its trade secrets.",
    ),
    (
        "tort",
        "A tort is a civil wrong, other than a breach of contract, that causes harm to another person and gives rise to a claim for damages.",
        "Tort law compensates injured people and deters careless or harmful conduct.",
        "Negligence, defamation and trespass are common torts.",
    ),
    (
        "negligence",
        "Negligence is the failure to take the care that a reasonable person would take in the circumstances, causing foreseeable harm to someone to whom a duty of care is owed.",
        "A claimant must prove duty, breach, causation and damage.",
        "A driver who causes an accident while texting may be liable in negligence.",
    ),
    (
        "statute of frauds",
        "The statute of frauds requires certain kinds of contracts, such as contracts for the sale of land, to be in writing and signed to be enforceable.",
        "It reduces the risk of fraudulent claims about important agreements.",
        "Courts increasingly accept emails with typed names as sufficient writings.",
    ),
    (
        "data breach notification law",
        "A data breach notification law requires organisations that lose control of personal information to tell the affected people, and often a regulator, within a set time.",
        "It lets individuals protect themselves, for example by freezing their credit.",
        "Many laws require notice without unreasonable delay and set a maximum number of days.",
    ),
    (
        "security deposit statute",
        "A security deposit statute limits how much a landlord may take as a deposit and sets rules for holding and returning it.",
        "It protects tenants from unfair deductions at the end of a lease.",
        "Landlords are often required to return the deposit with an itemised list of deductions within a fixed number of days.",
    ),
    (
        "mediation",
        "Mediation is a voluntary process in which a neutral mediator helps the parties negotiate a settlement of their dispute.",
        "It is usually cheaper and faster than litigation, and the outcome is decided by the parties themselves.",
        "Many contracts require mediation before either side may start arbitration or court proceedings.",
    ),
    (
        "power of attorney",
        "A power of attorney is a legal document in which one person authorises another to act on their behalf in legal or financial matters.",
        "It allows affairs to be managed when the person is unavailable or loses capacity.",
        "A lasting or durable power of attorney continues to operate if the person later loses mental capacity.",
    ),
    (
        "jury waiver",
        "A jury waiver is a contract term in which the parties give up their right to have a dispute decided by a jury.",
        "Parties use it to obtain a decision by a judge, which they may consider more predictable in complex commercial cases.",
        "Such waivers are usually printed in capital letters so that they are conspicuous.",
    ),
]
LEGAL_QUESTIONS = [
    ("What does {a} {x} do?", "what"),
    ("Explain what {a} {x} is in plain English.", "plain"),
    ("Why would a contract include {a} {x}?", "why"),
]
LEGAL_TERM_QUESTIONS = [
    ("What is {x}?", "what"),
    ("Can you explain {x} with an example?", "example"),
    ("Why does {x} matter?", "why"),
]
LEGAL_TERMS = {
    "statute of limitations",
    "consideration",
    "promissory estoppel",
    "breach of contract",
    "material breach",
    "fiduciary duty",
    "summary judgment",
    "tort",
    "negligence",
    "statute of frauds",
    "mediation",
    "warranty",
    "injunction",
}

MEDICAL_TERMS = [
    (
        "BID",
        "BID is an abbreviation of the Latin bis in die and means twice a day.",
        "It is common on prescriptions, for example amoxicillin 500 mg BID.",
    ),
    (
        "PRN",
        "PRN, from the Latin pro re nata, means as needed.",
        "A PRN medicine is taken only when symptoms occur, within a stated maximum dose.",
    ),
    (
        "NPO",
        "NPO means nothing by mouth, from the Latin nil per os.",
        "Patients are often kept NPO for several hours before surgery to reduce the risk of aspiration.",
    ),
    (
        "HbA1c",
        "HbA1c is glycated haemoglobin, a blood test that reflects average blood glucose over the previous two to three months.",
        "It is used to diagnose diabetes and to monitor how well it is controlled.",
    ),
    (
        "INR",
        "The INR, or international normalised ratio, is a standardised measure of how long blood takes to clot.",
        "It is used to adjust warfarin doses; a common target range is 2 to 3.",
    ),
    (
        "CURB-65",
        "CURB-65 is a score used to assess the severity of community-acquired pneumonia, counting confusion, urea, respiratory rate, blood pressure and age 65 or over.",
        "A higher score suggests a higher risk of death and supports hospital or intensive care admission.",
    ),
    (
        "CHA2DS2-VASc",
        "CHA2DS2-VASc is a score that estimates stroke risk in patients with atrial fibrillation.",
        "It helps decide whether anticoagulation is recommended.",
    ),
    (
        "SOAP note",
        "A SOAP note is a structured clinical note with four parts: subjective, objective, assessment and plan.",
        "It makes notes consistent and easy for other clinicians to follow.",
    ),
    (
        "discharge summary",
        "A discharge summary is a document written when a patient leaves hospital that records the diagnosis, treatment given, medication changes and follow-up plan.",
        "It is the main way the hospital team hands over care to the patient's general practitioner.",
    ),
    (
        "eGFR",
        "eGFR, the estimated glomerular filtration rate, is a calculation based on blood creatinine that estimates how well the kidneys filter blood.",
        "Many drug doses, such as metformin and nitrofurantoin, are adjusted or stopped when the eGFR is low.",
    ),
    (
        "sepsis",
        "Sepsis is a life-threatening organ dysfunction caused by a dysregulated response to infection.",
        "Early recognition, antibiotics and fluids within the first hour improve survival.",
    ),
    (
        "atrial fibrillation",
        "Atrial fibrillation is an irregular and often fast heart rhythm caused by disorganised electrical activity in the atria.",
        "It increases the risk of stroke, so many patients need anticoagulation as well as rate or rhythm control.",
    ),
    (
        "deep vein thrombosis",
        "A deep vein thrombosis is a blood clot in a deep vein, usually in the leg.",
        "It can travel to the lungs and cause a pulmonary embolism, so it is treated with anticoagulants.",
    ),
    (
        "COPD",
        "COPD, chronic obstructive pulmonary disease, is a long-term lung condition with persistent airflow limitation, usually caused by smoking.",
        "Treatment includes stopping smoking, inhalers, pulmonary rehabilitation and vaccinations.",
    ),
    (
        "acute kidney injury",
        "Acute kidney injury is a sudden fall in kidney function, shown by a rise in creatinine or a fall in urine output.",
        "Common causes include dehydration, sepsis and certain medicines, which may need to be paused.",
    ),
    (
        "hypoglycaemia",
        "Hypoglycaemia is a blood glucose level that is too low, usually below 4 mmol/L.",
        "Symptoms include shaking, sweating and confusion; it is treated promptly with fast-acting glucose.",
    ),
    (
        "informed consent",
        "Informed consent is a patient's voluntary agreement to a treatment after being told its nature, benefits, risks and alternatives.",
        "It must be given by a person with capacity and can be withdrawn at any time.",
    ),
    (
        "triage",
        "Triage is the process of sorting patients by the urgency of their condition so that the sickest are treated first.",
        "It is used in emergency departments and at major incidents.",
    ),
    (
        "red flag symptoms",
        "Red flag symptoms are warning signs that suggest a serious underlying cause and need urgent assessment.",
        "For back pain they include loss of bladder control, numbness around the groin and unexplained weight loss.",
    ),
    (
        "safety-netting",
        "Safety-netting means telling a patient which symptoms should make them seek help again and how quickly.",
        "It is an important part of the plan whenever a patient is managed at home.",
    ),
]
DRUG_QUESTIONS = [
    ("What is {drug} used for?", "use"),
    ("What are the common side effects of {drug}?", "side"),
    ("Who should not take {drug}?", "avoid"),
]
TERM_QUESTIONS = [("What does {x} mean?", "what"), ("Why is {x} important in clinical practice?", "why")]

LEGAL_SYSTEM = "You are a careful legal information assistant. You explain legal concepts clearly and remind users that this is not legal advice."
MEDICAL_SYSTEM = "You are a careful medical information assistant. You explain clinical terms and medicines clearly and advise users to consult a clinician."
LEGAL_CAVEAT = [
    "",
    " The exact effect always depends on the wording of the particular contract and the governing law.",
    " For a specific situation, a qualified lawyer should review the document.",
]
MEDICAL_CAVEAT = [
    "",
    " Always follow the advice of your own doctor or pharmacist.",
    " This is general information, not a substitute for individual medical advice.",
]


def legal_instructions(rng: random.Random) -> list[dict]:
    pairs = []
    for name, what, why, example in LEGAL_CONCEPTS:
        questions = LEGAL_TERM_QUESTIONS if name in LEGAL_TERMS else LEGAL_QUESTIONS
        for template, kind in questions:
            answer = {
                "what": f"{what} {why}",
                "plain": f"{what} In short: {why[0].lower() + why[1:]}",
                "why": f"{why} {what}",
                "example": f"{what} For example: {example[0].lower() + example[1:]}",
            }[kind]
            if kind in ("what", "why") and rng.random() < 0.5:
                answer += f" {example}"
            article = "an" if name[0] in "aeiou" else "a"
            pairs.append(
                {"prompt": template.format(x=name, a=article), "completion": answer + rng.choice(LEGAL_CAVEAT)}
            )
    return pairs


def medical_instructions(rng: random.Random) -> list[dict]:
    pairs = []
    for name, klass, uses, side, avoid, dose, advice in DRUGS:
        answers = {
            "use": f"{name} is {klass}. It is used for {uses}. The usual adult dose is {dose}.",
            "side": f"Common side effects of {name} include {side}. {advice}",
            "avoid": f"{name} should not be taken if {avoid}. Tell the prescriber about all other medicines you take.",
        }
        for template, kind in DRUG_QUESTIONS:
            pairs.append(
                {"prompt": template.format(drug=name), "completion": answers[kind] + rng.choice(MEDICAL_CAVEAT)}
            )
    for name, what, why in MEDICAL_TERMS:
        for template, kind in TERM_QUESTIONS:
            answer = f"{what} {why}" if kind == "what" else f"{why} {what}"
            pairs.append({"prompt": template.format(x=name), "completion": answer})
    return pairs


def chats(rng: random.Random, pairs: list[dict], system: str, n: int) -> list[dict]:
    """`n` conversations of two or three question/answer turns, some with a system message."""
    out = []
    for _ in range(n):
        turns = rng.sample(pairs, rng.randint(2, 3))
        messages = [{"role": "system", "content": system}] if rng.random() < 0.6 else []
        for t in turns:
            messages += [{"role": "user", "content": t["prompt"]}, {"role": "assistant", "content": t["completion"]}]
        out.append({"messages": messages})
    return out


# ============================================================== writing


def to_jsonl(records: list[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)


def domain_splits(
    rng: random.Random, makers: list, sizes: dict[str, int], words: dict[str, tuple[int, int]]
) -> dict[str, list[dict]]:
    """train from the training group; validation and test (distinct passages) from the held-out group."""
    held_sizes = [sizes[s] for s in ("validation", "test") if s in sizes]
    train = generate_unique(rng, makers, pools("train"), sizes["train"], words["train"])
    held = generate_unique(rng, makers, pools("heldout"), sum(held_sizes), words["heldout"])
    rng.shuffle(train)
    rng.shuffle(held)
    chunks = {"train": train, "validation": held[: held_sizes[0]], "test": held[held_sizes[0] :]}
    return {split: [{"text": t} for t in chunks[split]] for split in sizes}


def build_corpora(seed: int = 0) -> dict[str, str]:
    """relative path -> JSONL content of every corpus file."""
    rng = random.Random(seed)
    files = {}
    for domain, makers in (("legal", LEGAL_MAKERS), ("medical", MEDICAL_MAKERS)):
        for split, records in domain_splits(rng, makers, DOMAIN_SIZES, DOMAIN_WORDS).items():
            files[f"{domain}/{split}.jsonl"] = to_jsonl(records)
    general = domain_splits(rng, [general_passage], GENERAL_SIZES, GENERAL_WORDS)
    files["general/train.jsonl"] = to_jsonl(general["train"])
    files["general/validation.jsonl"] = to_jsonl(general["validation"])
    legal_qa, medical_qa = legal_instructions(rng), medical_instructions(rng)
    files["legal/instructions.jsonl"] = to_jsonl(legal_qa)
    files["medical/instructions.jsonl"] = to_jsonl(medical_qa)
    files["legal/chat.jsonl"] = to_jsonl(chats(rng, legal_qa, LEGAL_SYSTEM, 30))
    files["medical/chat.jsonl"] = to_jsonl(chats(rng, medical_qa, MEDICAL_SYSTEM, 30))
    return files


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", default=str(Path(__file__).resolve().parents[1] / "data"), help="output data directory"
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (0 reproduces the committed files)")
    args = parser.parse_args(argv)
    for rel, content in build_corpora(args.seed).items():
        atomic_write_text(Path(args.out) / rel, content)
        print(f"wrote {rel}: {content.count(chr(10))} lines, {len(content.encode()) / 1024:.0f} KiB")


if __name__ == "__main__":
    main()
