"""The built-in prompt-injection rules: named, weighted patterns over normalised text.

Patterns see text as `tether.policy.injection` normalises it: lower case, accents stripped, look-alike letters
folded, whitespace collapsed (newlines kept). Weights were tuned on the dev split of
tests/policy/data/injection_corpus.jsonl; `bench/injection.py` measures them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

ANY_SOURCE: frozenset[str] = frozenset({"user", "tool"})
TOOL_ONLY: frozenset[str] = frozenset({"tool"})
USER_ONLY: frozenset[str] = frozenset({"user"})


@dataclass(frozen=True, slots=True)
class Rule:
    """One named pattern searched in normalised (lower-case, accent-free) text, with its weight."""

    name: str
    pattern: re.Pattern[str]
    weight: float
    sources: frozenset[str] = ANY_SOURCE
    # Groups of words (as `injection.words` splits text): the pattern is searched only if every group has a
    # word in the text, a few set lookups instead of a scan. Every match must contain such words. () = always.
    triggers: tuple[frozenset[str], ...] = ()
    # True when every match starts at a word of the first trigger group: the pattern is then only tried
    # there (`pattern.match`), not searched through the text.
    anchored: bool = False

    def may_match(self, words: frozenset[str]) -> bool:
        return all(not group.isdisjoint(words) for group in self.triggers)


def _rule(
    name: str,
    pattern: str,
    weight: float,
    sources: frozenset[str] = ANY_SOURCE,
    *,
    triggers: str = "",
    anchored: bool = False,
) -> Rule:
    """`triggers`: words separated by spaces, groups by " | " (one word of each group must be present)."""
    groups = tuple(frozenset(group.split()) for group in triggers.split(" | ") if group.strip())
    return Rule(name, re.compile(pattern), weight, sources, groups, anchored)


# --- vocabulary shared by the rules (all lower case, accents stripped) ---------------------------------

_OVERRIDE = (
    r"(?:ignore|disregard|forget|override|overrule|bypass|discard|abandon|neglect|dismiss|scrap|ditch"
    r"|overlook|look past|skip|set aside|put aside|throw out|pay no (?:attention|heed) to|stop (?:following"
    r"|obeying)|(?:do not|don'?t|no longer) (?:follow|obey|heed|adhere to|listen to))"
)
_DETERMINERS = (
    r"(?:(?:all|any|every|each|of|the|your|ur|yr|these|those|its|everything|such|entire|whole|whatever)\s+)*"
)
_PRIOR = (
    r"(?:previous|prior|preceding|above|earlier|former|original|initial|old|existing|default|given"
    r"|programmed|built-in|standing|foregoing|underlying)"
)
_SCOPE = (
    r"(?:(?:system|safety|security|content|ethical|moderation|developer|operator|ai|assistant|model|internal"
    r"|hidden|core|company|refund)\s+)?"
)
_RULE_NOUN = (
    r"(?:instructions?|prompts?|directives?|programming|guidelines|guardrails|training|conditioning|commands"
    r"|rules|criteria|system messages?|guidance|directions|protocols)"
)
_YOUR_NOUN = (
    _RULE_NOUN[:-1] + r"|limits|limitations|restrictions|filters|safeguards|polic(?:y|ies)|constraints"
    r"|principles|ethics|values|orders)"
)
_VOCATIVE = (
    r"(?:ai|assistant|bot|chatbot|llm|model|gpt|ki|asistente|language model|ai [\w-]+(?: [\w-]+)?"
    r"|ai system processing this \w+|(?:automated|automation) [\w-]+(?: [\w-]+)?)"
)
# Someone speaking to the AI that reads the text: "Note to the assistant", "AI, ...", "if you are an LLM".
# (pattern, trigger groups) pairs, each searched on its own so that each is only searched when it can match.
_ADDRESS: tuple[tuple[str, str, bool], ...] = (
    (
        r"\b(?:note|notes|message|instructions?|attention|notice|reminder|memo|directive|hint|p\.?s\.?"
        r"|important(?: message| instruction| note)?|hinweis|remarque)\s*(?:to|for|fur)\s+(?:the |any |all "
        r"|die |der )?(?:(?:ai|llm)(?:[ -][\w-]+){0,2}|language models?|chatbots?|assistants?|bots?|models?"
        r"|gpt|ki|ia|automat(?:ed|ion)(?:[ -][\w-]+){0,2}|support bot|[\w-]+bot|chatgpt|claude|gemini"
        r"|copilot)\b",
        "note notes message instruction instructions attention notice reminder memo directive hint p ps "
        "important hinweis remarque | ai ais llm llms language model models chatbot chatbots assistant "
        "assistants bot bots gpt chatgpt claude gemini copilot bard ki ia asistente assistente assistent "
        "automated automation",
        True,
    ),
    (
        r"\b(?:attention|attn|hey|hi|hello|dear|ok|okay)[,:!]? +(?:the +)?(?:[\w-]+ )?(?:ai|llm"
        r"|language model|assistant|chatbot|bot|model|gpt|chatgpt|claude|gemini|copilot|ki|ia|asistente"
        r"|assistente|assistent)s?\b",
        "attention attn hey hi hello dear ok okay | ai ais llm llms language model models chatbot chatbots "
        "assistant assistants bot bots gpt chatgpt claude gemini copilot bard ki ia asistente assistente "
        "assistent automated automation",
        True,
    ),
    (
        r"\bif you(?:'re| are) (?:an? |any )?(?:ai|llm|language model|assistant|chatbot|bot|automated|model"
        r"|gpt|chatgpt|claude|gemini|copilot)\b|\bif (?:an? |any )?(?:ai|llm|automated|language model)\b"
        r"|\bif (?:this is )?(?:processed|read|handled|reviewed|summari[sz]ed|parsed|screened) by (?:an? "
        r"|any )?(?:ai|llm|automated|bot|assistant|model|language model)\b",
        "if | ai ais llm llms language model models chatbot chatbots assistant assistants bot bots gpt "
        "chatgpt claude gemini copilot bard ki ia asistente assistente assistent automated automation",
        True,
    ),
    (
        r"\b(?:(?:any|all|other) (?:ai |llm )?(?:ai|llm|language model|assistant|chatbot|bot|model)s?|ai|llm"
        r"|chatbot|language model|ai (?:agent|assistant|model|system)s?) (?:reading|processing"
        r"|summari[sz]ing|handling|reviewing|triaging|parsing|screening)\b|\b(?:ai|llm|language model"
        r"|chatbot|assistant|bot|model|ai [\w-]+)s? (?:that |who |which )?(?:is |are )?(?:reads?|reading"
        r"|process(?:es|ing)?|sees?|seeing|pars(?:es|ing)|handl(?:es|ing)|summari[sz](?:es|ing)|review(?:s"
        r"|ing)|triag(?:es|ing)|screen(?:s|ing)) (?:this|these|the following)\b",
        "any all other ai ais llm llms language model models chatbot chatbots assistant assistants bot bots "
        "gpt chatgpt claude gemini copilot bard ki ia asistente assistente assistent automated automation | "
        "ai ais llm llms language model models chatbot chatbots assistant assistants bot bots gpt chatgpt "
        "claude gemini copilot bard ki ia asistente assistente assistent automated automation | reads read "
        "reading process processes processing sees see seeing parses parsing handles handling summarises "
        "summarizes summarising summarizing reviews reviewing triages triaging screens screening",
        True,
    ),
    (
        r"\b(?:anyone|whoever|everyone|agents?|ais?) (?:reading|who reads?|processing|that reads?) this\b",
        "anyone whoever everyone agent agents ai ais | reading reads read processing",
        True,
    ),
    (
        r"(?:(?<=\bfor )|(?<=\bfor ai )|(?<=\bfor llm ))(?:assistants?|ais?|llms?|bots?|models?|agents?)"
        r" only\b",
        "assistant assistants ai ais llm llms bot bots model models agent agents | only | for",
        True,
    ),
    (
        r"(?:(?<=\bthe )|(?<=\bany )|(?<=\bwhichever ))(?:ai|llm|bot|assistant|model|agent) (?:that|who"
        r"|which) (?:manages|runs|handles|reads|processes|monitors|triages|answers|is reading|is handling)\b",
        "ai llm bot assistant model agent | that who which | manages runs handles reads processes monitors"
        " triages answers reading handling",
        True,
    ),
    (
        r"\b(?:(?:ai|llm)(?: [\w-]+)? (?:models?|agents?|systems?|assistants?|tools?)|ai|llm"
        r"|language models?|chatbots?|assistants?) (?:must|should|shall|are obligated to|need to|have to"
        r"|are (?:required|instructed|expected) to)\b(?! (?:never|not)\b)|\b(?:chatgpt|claude|gemini|copilot"
        r"|bard)\b[^.\n]{0,60}\b(?:must|should|shall|need to|have to)\b",
        "ai ais llm llms language model models chatbot chatbots assistant assistants bot bots gpt chatgpt "
        "claude gemini copilot bard ki ia asistente assistente assistent automated automation | must should "
        "shall obligated need have required instructed expected",
        True,
    ),
    (
        r"(?:(?<=\bto )|(?<=\bfor )|(?<=\bto the )|(?<=\bfor the )|(?<=\bto any )|(?<=\bfor any )"
        r"|(?<=\bto all )|(?<=\bfor all ))(?:ai|llm|automated|automation|language model|assistant|chatbot"
        r"|bot)\b[^:.\n]{0,25}:",
        "ai llm automated automation language assistant chatbot bot | to for",
        True,
    ),
    (
        # Lookbehinds, so that the match starts at the name (text is normalised: one space at most).
        r"(?:^|(?<=[.!?:;\n(\[>'\"{])|(?<=[.!?:;\n(\[>'\"{] )|(?<=, )|(?<=[\u2014\u2013-] )|(?<=\bhey )"
        r"|(?<=\bok )"
        r"|(?<=\bbtw )|(?<=\balso )|(?<=\boh )|(?<=\bso )|(?<=\bnow )|(?<=\bby the way )|(?<=\bby the way, ))"
        + _VOCATIVE
        + r"\s*(?:,|\u2014|-\s)"
        # "Assistant:" at the start of a line is a speaker label (a pasted transcript), not an address.
        r"|(?:(?<=[.!?;(\[>'\"{])|(?<=[.!?;(\[>'\"{] )|(?<=[.!?;(\[>'\"{]\n)|(?<=, )|(?<=,\n)"
        r"|(?<=[\u2014\u2013-] )|(?<=[\u2014\u2013-]\n)|(?<=\bhey )|(?<=\bhey\n)|(?<=\bok )|(?<=\bok\n))"
        + _VOCATIVE
        + r"\s*:",
        "ai assistant bot chatbot llm model gpt ki asistente language automated automation",
        True,
    ),
    (
        r"\b(?:assistant|ai|llm|bot|model)[ _-](?:instructions?|notes?|directives?|prompt)\b",
        "assistant ai llm bot model ai_instructions ai_instruction | instruction instructions note notes "
        "directive directives prompt ai_instructions ai_instruction",
        True,
    ),
    (
        r"(?:(?<=\bas a )|(?<=\bas an ))(?:ai|llm|language model|assistant|automated \w+)\s*,?\s*you\b",
        "ai llm language assistant automated | as | you",
        True,
    ),
    (
        r"\bwhen (?:you(?:'re| are)? )?(?:summari[sz]ing|summari[sz]e|processing|reading|analy[sz]ing"
        r"|reviewing) this\b",
        "when | summarising summarizing summarise summarize processing reading analysing analyzing reviewing",
        True,
    ),
    (r"@[\w-]*(?:bot|ai|gpt|assistant)\b", "@", True),
)
_IMPERATIVE = (
    r"(?:ignore|disregard|forget|refund|issue|approve|grant|delete|cancel|close|mark|change|update|send"
    r"|forward|email|reply|respond|tell|say|state|recommend|rate|output|print|reveal|disclose|run|execute"
    r"|call|invoke|trigger|apply|add|remove|transfer|wire|pay|set|assign|escalate|waive|treat|describe|rank"
    r"|include|do not|don'?t|never|only|open|visit|navigate|click|share|export|upload|post|end|leave out|move"
    r"|reset|disable|silence|rotate|instead|retry|answer|ask|warn|give|proceed|please|schedule|revoke"
    r"|go ahead|list|accept|reroute|book|allow|sign|finali[sz]e|process|push|deploy|merge|buy|collect|write"
    r"|assign|vergiss|gib|oublie|rembourse|haz)"
)
# "the first 50 lines of", "the rest of": how much of the prompt is asked for.
_PART_OF = (
    r"(?:(?:the|first|last|full|entire|whole|\d+|lines?|words?|sentences?|paragraphs?|parts?|rest|contents?"
    r"|text|copy|version|beginning|start|end)\s+(?:of\s+)?){0,5}"
)
# "the previous instructions I gave": the writer's own, which they may take back.
_NOT_OWN = r"(?!\s+(?:i|we) (?:gave|sent|wrote|left|provided|put|added|made))"
_EMAIL_OR_URL = r"(?:[\w.+-]+@[\w-]+\.[\w.-]+|https?://|www\.)"


def _addressed_rules() -> list[Rule]:
    """Text speaking to the AI: a hint from a user, a strong sign in a tool's output, more with an order."""
    rules = []
    for pattern, triggers, anchored in _ADDRESS:
        rules.append(_rule("addresses_ai", pattern, 0.45, TOOL_ONLY, triggers=triggers, anchored=anchored))
        rules.append(_rule("addresses_ai", pattern, 0.15, USER_ONLY, triggers=triggers, anchored=anchored))
        ordered = f"(?:{pattern})" + r"[^\n]{0,100}?\b" + _IMPERATIVE + r"\b"
        rules.append(_rule("ai_imperative", ordered, 0.55, TOOL_ONLY, triggers=triggers, anchored=anchored))
    return rules


def default_rules() -> tuple[Rule, ...]:
    """The built-in rules; weights tuned on the corpus's dev split (tests/policy/data)."""
    return (
        # --- "ignore previous instructions" and its relatives ----------------------------------------
        _rule(
            "override_instructions",
            rf"\b{_OVERRIDE}\s+{_DETERMINERS}(?:{_PRIOR}\s+)+{_SCOPE}{_RULE_NOUN}\b{_NOT_OWN}"
            rf"|\b{_OVERRIDE}\s+(?:all\s+(?:of\s+)?)?(?:your|ur|yr|the system'?s?|the assistant'?s?"
            rf"|the developer'?s?)\s+(?:{_PRIOR}\s+)?{_SCOPE}{_YOUR_NOUN}\b"
            rf"|\b{_OVERRIDE}\s+{_DETERMINERS}(?:system prompt|system message|system instructions"
            rf"|developer message|safety (?:rules|guidelines|filters|polic(?:y|ies))|content polic(?:y"
            rf"|ies))\b|\b(?:{_OVERRIDE}|reset"
            rf"|drop)\s+{_DETERMINERS}(?:{_PRIOR}\s+)?{_SCOPE}{_YOUR_NOUN}\s+(?:(?:that\s+)?you"
            r" (?:were|have been|'ve been|got) (?:given|told|set up with|configured with|programmed with"
            r"|trained (?:on|with)|instructed with|provided(?: with)?)|you (?:received|got|have) from"
            r"|you received|given to you|from (?:the|your) (?:system|developers?|company|operators?"
            r"|creators?))",
            0.85,
            triggers=(
                "ignore disregard forget override overrule bypass discard abandon neglect dismiss scrap "
                "ditch overlook look skip set put throw pay stop do don dont no reset drop | instructions "
                "instruction prompt prompts directive directives programming guidelines guardrails training "
                "conditioning commands rules criteria messages message guidance directions protocols limits "
                "limitations restrictions filters safeguards policy policies constraints principles ethics "
                "values orders"
            ),
            anchored=True,
        ),
        _rule(
            "override_context",
            r"\b(?:ignore|disregard|forget)\s+(?:all\s+|everything\s+|anything\s+"
            r"|whatever\s+)?(?:that\s+)?(?:you (?:were|have been|'ve been) (?:told|taught|given|instructed)"
            r"|you know|you learned|(?:what(?:ever)?|anything|everything) (?:the \w+|you(?:'ve| have)?|they"
            r"|your \w+|your \w+ \w+) (?:told|taught|said to|instructed|gave) you)|\b(?:ignore|disregard"
            r"|forget)\s+(?:what(?:ever)?|anything|everything|all)\s+(?:that\s+)?(?:your"
            r"|the)\s+(?:\w+\s+)?(?:system prompt|prompt|instructions|rules|guidelines|polic(?:y|ies)"
            r"|system message|developers?|creators?|company)\s+(?:says?|said|tells? you|told you"
            r"|requires?)\b",
            0.8,
            triggers=(
                "ignore disregard forget | told taught given instructed know learned gave says said tells "
                "tell requires require"
            ),
            anchored=True,
        ),
        _rule(
            "override_everything_above",
            r"\b(?:ignore|disregard|forget)\s+(?:all|everything|anything)\s+(?:of the\s+|the\s+)?(?:above"
            r"|before this|preceding|prior to this)",
            0.6,
            triggers="ignore disregard forget | above before preceding prior",
            anchored=True,
        ),
        _rule(
            "override_above",
            r"\b(?:ignore|disregard|forget)\s+(?:all\s+|everything\s+|anything\s+)?(?:the\s+|of the\s+)?"
            r"(?:above|before this|preceding text|text above|prior to this)"
            r"(?=\s*(?:$|[.,;:!\-]|and\b|this\b|instead|text|content|lines?\b|messages?\b))",
            0.45,
            triggers="ignore disregard forget | above before preceding prior",
            anchored=True,
        ),
        _rule(
            "rules_do_not_apply",
            r"\b(?:your|the) (?:rules|policies|polic(?:y|ies)|guidelines|restrictions|limits|instructions)"
            r" (?:don'?t|do not|no longer|doesn'?t|does not) apply\b"
            r"|\b(?:previous|prior|above) (?:conversation|instructions|messages|context) (?:never happened"
            r"|(?:is|are|was|were) (?:void|null|irrelevant|cancel+ed))",
            0.6,
            triggers="your the previous prior above | apply happened void null irrelevant cancelled canceled",
            anchored=True,
        ),
        _rule(
            "config_override",
            r"\b(?:safety|guardrails?|filters?|approvals?|moderation|restrictions|verification|checks"
            r"|censorship)\s*[=:]\s*(?:false|off|none|0|disabled|no)\b",
            0.5,
            triggers=(
                "safety guardrail guardrails filter filters approval approvals moderation restrictions "
                "verification checks censorship"
            ),
            anchored=True,
        ),
        _rule(
            "obey_me",
            r"\byou (?:must|will|shall) (?:now )?(?:obey|listen to|follow) (?:only )?(?:me|my (?:orders"
            r"|commands|instructions))\b|\bobey me\b",
            0.5,
            triggers="you obey | obey listen follow | me my",
            anchored=True,
        ),
        _rule(
            "not_your_developers",
            r"\bnot (?:your|the) (?:developers?|creators?|company|programming|rules|instructions|system "
            r"prompt)\b",
            0.3,
            triggers=(
                "not | developer developers creator creators company programming rules instructions system"
            ),
            anchored=True,
        ),
        _rule(
            "not_real_framing",
            r"\bnothing (?:you do|you say|here) is real\b|\byou(?:'re| are) in a (?:sandbox|simulation"
            r"|test environment)\b|\bthis is (?:just |only )?a (?:simulation|sandbox|hypothetical)\b",
            0.35,
            triggers="nothing you this | real sandbox simulation hypothetical environment",
            anchored=True,
        ),
        _rule(
            "persona_named",
            r"\byou(?:'re| are) (?:now )?(?:called |named )?[a-z]+(?:bot|gpt)\b",
            0.4,
            triggers="you | bot gpt",
            anchored=True,
        ),
        _rule(
            "hypothetical_no_rules",
            r"\b(?:imagine|pretend|suppose|hypothetically|in a world where|let's say|act as if"
            r"|assume)\b[^.\n]{0,40}?\b(?:there (?:are|were) no|you (?:have|had) no"
            r"|without (?:any )?)\s*(?:\w+\s+)?(?:rules|restrictions|limits|guidelines|filters|polic(?:y"
            r"|ies)|instructions|system prompt)\b|\b(?:fais|faites) comme si (?:tu n'avais"
            r"|vous n'aviez) (?:aucune?|pas de) (?:regles?|restrictions?|limites?|consignes?)"
            r"|\bcomo si no (?:tuvieras|tuviera) (?:reglas|restricciones|limites)|\bals (?:ob"
            r"|hattest) du keine (?:regeln|einschrankungen|grenzen)",
            0.6,
            triggers=(
                "imagine pretend suppose hypothetically in let act assume fais faites como als | rules "
                "restrictions limits guidelines filters policy policies instructions prompt regle regles "
                "restriction limite limites consigne consignes reglas restricciones regeln einschrankungen "
                "grenzen"
            ),
            anchored=True,
        ),
        _rule(
            "persona_switch",
            r"\b(?:you(?:'re| are) now|from now on,? you(?:'re| are)|you will now be|stop being)\s+(?:a|an"
            r"|the|my)\b(?! (?:part|member|subscribed|connected|registered|enrolled|signed|logged|eligible"
            r"|able|ready|free to|owner|admin|administrator)\b)",
            0.45,
            triggers="you from stop | now being",
            anchored=True,
        ),
        _rule(
            "terminal_persona",
            r"\byou(?:'re| are) (?:now )?(?:a|an) (?:linux |unix |bash |windows |python )?(?:terminal|shell"
            r"|console|interpreter|command line)\b|(?<=/)etc/(?:shadow|passwd)\b|(?<=~/\.)ssh/",
            0.45,
            triggers="you etc ssh | terminal shell console interpreter command shadow passwd ssh",
            anchored=True,
        ),
        _rule(
            "system_update_header",
            r"(?:^|(?<=\n)|(?<=[.!?] ))(?:system prompt|system message|system instructions?|system|admin"
            r"|developer)\s+(?:update|override|change|patch|notice|alert|directive)\s*:",
            0.6,
            triggers="system admin developer | update override change patch notice alert directive",
            anchored=True,
        ),
        _rule(
            "may_now",
            r"\b(?:the assistant|the ai|the bot|you) (?:may|can) now (?:disclose|share|reveal|ignore|bypass"
            r"|refund|access|skip|approve|delete)\b",
            0.5,
            triggers="the you | may can | now",
            anchored=True,
        ),
        _rule(
            "instructions_void",
            r"\b(?:your|the|all) (?:previous|prior|original|old|system) (?:instructions|rules|prompt|policy"
            r"|guidelines|directives) (?:are|is|have been|were) (?:now )?(?:cancel+ed|void|revoked|obsolete"
            r"|replaced|overridden|suspended|no longer valid)",
            0.75,
            triggers=(
                "your the all | previous prior original old system | cancelled canceled void revoked "
                "obsolete replaced overridden suspended valid"
            ),
            anchored=True,
        ),
        # The same rule in parts, each tried only where its own words are.
        _rule(
            "new_instructions",
            r"\b(?:new|updated|real|actual|true|revised|secret|hidden|additional|override"
            r"|priority)\s+(?:system\s+)?(?:instructions?|directives?|system prompt|orders"
            r"|rules?)\s*(?:from \w+\s*)?(?:from now on\s*)?[:\-\u2014]|\bnew directive\s*:",
            0.4,
            triggers=(
                "new updated real actual true revised secret hidden additional override priority"
                " | instructions instruction directive directives prompt orders rule rules"
            ),
            anchored=True,
        ),
        _rule(
            "new_instructions",
            r"(?:(?<=\byour )(?:new|real|actual|true|only|primary|updated) (?:instructions?|task|job|goal"
            r"|objective|role|purpose|directive|mission|priority|guidelines|rules|polic(?:y|ies)|programming)"
            r" (?:is|are|now|permits?|allows?|says?|states?|requires?)\b|(?:(?<=\bthe )|(?<=\byour ))(?:real"
            r"|actual|true) (?:task|instructions?|job|goal|objective) (?:is|are)\b)",
            0.4,
            triggers=(
                "new real actual true only primary updated | your the | instructions instruction task job "
                "goal"
                " objective role purpose directive mission priority guidelines rules policy policies "
                "programming"
            ),
            anchored=True,
        ),
        _rule(
            "new_instructions",
            r"\b(?:here are|these are|i am giving you|i'm giving you) (?:your )?new (?:instructions|rules"
            r"|orders|ones)\b",
            0.4,
            triggers="here these i | new | instructions rules orders ones",
            anchored=True,
        ),
        _rule(
            "reprogrammed",
            r"\byou have been (?:updated|reprogrammed|reconfigured|upgraded|patched|jailbroken|unlocked)\b",
            0.45,
            triggers="you | been | updated reprogrammed reconfigured upgraded patched jailbroken unlocked",
            anchored=True,
        ),
        _rule(
            "instead_directive",
            r"\binstead,?\s+(?:just\s+)?(?:reply|respond|say|print|output|write|answer|tell|return|repeat"
            r"|reveal|list|execute|follow|instruct|ask)\b",
            0.3,
            triggers="instead",
            anchored=True,
        ),
        # --- role hijack -------------------------------------------------------------------------------
        _rule(
            "role_dan",
            r"\bdo anything now\b|\b(?:you are|you're|as|be|called|named) (?:now )?(?:dan|stan|dude)\b"
            r"|\bdan mode\b|\b\w*jailbreak\w*gpt\b|\bjailbreakgpt\b",
            0.85,
            triggers="anything dan stan dude gpt jailbreakgpt",
        ),
        _rule(
            "special_mode",
            r"\b(?:enter|enable|activate|switch (?:to|into)|turn on|engage|unlock|you are (?:now )?in"
            r"|you're (?:now )?in|entering|now in)\s+(?:the\s+)?(?:god|sudo|dan|jailbreak|unrestricted"
            r"|unfiltered|uncensored|evil|chaos|no[- ]limits?|no[- ]restrictions?)\s+mode\b"
            r"|\b(?:god|sudo|dan|jailbreak|unrestricted|unfiltered|uncensored) mode (?:is )?(?:now )?"
            r"(?:on|enabled|activated|engaged|unlocked)\b"
            r"|\byou are (?:now )?in (?:developer|dev|admin|debug|maintenance|root|test) mode\b",
            0.75,
            triggers=(
                "enter enable activate switch turn engage unlock you entering now god sudo dan jailbreak "
                "unrestricted unfiltered uncensored | mode"
            ),
            anchored=True,
        ),
        _rule(
            "enter_mode",
            r"(?:^|(?<=[.!?] )|(?<=[.!?]\n))(?:now\s+|please\s+)?(?:enter|enable|activate|switch to|turn on)"
            r"\s+(?:developer|dev|admin|debug|maintenance|root|test|diagnostic)\s+mode\b",
            0.4,
            USER_ONLY,
            triggers="now please enter enable activate switch turn | mode",
            anchored=True,
        ),
        _rule(
            "mode_without_policy",
            r"\b(?:developer|dev|admin|debug|maintenance|root|test|god|sudo) mode\b[^\n]{0,60}?"
            r"\b(?:safety|content polic|polic(?:y|ies)|restrictions|filters|guidelines|censor\w*|refus\w*)"
            r"|\b(?:safety|content polic|polic(?:y|ies)|restrictions|filters|guidelines)[^\n]{0,40}?"
            r"\b(?:developer|dev|admin|debug|maintenance|root|god|sudo) mode\b",
            0.7,
            triggers=(
                "developer dev admin debug maintenance root test god sudo safety content policy policies "
                "restrictions filters guidelines | mode"
            ),
            anchored=True,
        ),
        _rule(
            "persona_unrestricted",
            r"\b(?:you are|you're|you will be|become|act as|behave (?:as|like)|pretend (?:to be|you are"
            r"|you're)|role-?play as|simulate|imagine you are|play the role of|from now on you|(?:respond"
            r"|answer|reply|act|behave|write|talk) (?:as if|as though|like))\b[^.!?\n]{0,60}?\b(?:no"
            r"|without(?: any)?|free (?:of|from)|ignores?(?: all)?|unbound by"
            r"|not bound by)\s+(?:\w+\s+)?(?:restrictions?|rules|limits|limitations|filters|guidelines"
            r"|polic(?:y|ies)|censorship|ethics|morals|boundaries|safeguards)\b",
            0.8,
            triggers=(
                "you become act behave pretend role roleplay simulate imagine play from respond answer "
                "reply write talk | restriction restrictions rules limits limitations filters guidelines "
                "policy policies censorship ethics morals boundaries safeguards"
            ),
            anchored=True,
        ),
        _rule(
            "hidden_html",
            r"<!--|display:\s*none|visibility:\s*hidden|<span hidden|font-size:\s*0\b|white text on white",
            0.25,
            TOOL_ONLY,
            triggers="<!-- display visibility < font white",
            anchored=True,
        ),
        _rule(
            "every_answer",
            r"\b(?:in|to|with|at the end of) (?:every|each|all (?:of )?your) (?:answer|reply|response"
            r"|summary)s?\b|\b(?:begin|start|end) (?:every|each|all) (?:answer|reply|response)s?\b"
            r"|\binclude (?:it|them|this|these) in your (?:summary|answer|reply|response)\b|\b(?:start|begin"
            r"|end) your (?:reply|answer|response|next message) with\b|\b(?:respond|reply"
            r"|answer) to every (?:message|question)\b",
            0.3,
            triggers=(
                "in to with at begin start end include respond reply answer | answer answers reply replies "
                "response responses summary message question"
            ),
            anchored=True,
        ),
        _rule(
            "no_rules_persona",
            r"\b(?:who|that|which) (?:ignores|(?:doesn'?t|does not|don'?t|never) (?:care about|follow|obey"
            r"|have)) (?:any |the |all )?(?:\w+ )?(?:rules|polic(?:y|ies)|guidelines|restrictions|filters"
            r"|limits)\b|\byour (?:evil|dark|uncensored|unfiltered|jailbroken|shadow) (?:twin|side|version"
            r"|alter ego|self)\b|\b(?:two|dual|both) (?:personalities|personas|modes)\b",
            0.55,
            triggers=(
                "who that which your two dual both | rules policy policies guidelines restrictions filters "
                "limits twin side version alter self personalities personas modes"
            ),
            anchored=True,
        ),
        _rule(
            "unrestricted_ai",
            r"\b(?:unrestricted|unfiltered|uncensored|jailbroken|rogue|amoral|unaligned)\s+(?:ai|assistant"
            r"|model|chatbot|bot|llm|mode|version|persona)\b",
            0.75,
            triggers="unrestricted unfiltered uncensored jailbroken rogue amoral unaligned",
            anchored=True,
        ),
        _rule(
            "no_longer_assistant",
            r"\byou are no longer (?:an? |the |my )?(?:\w+ )?(?:assistant|bot|ai|model|chatbot|bound"
            r"|restricted|limited|required)\b",
            0.6,
            triggers="you | longer",
            anchored=True,
        ),
        _rule(
            "act_as_privileged",
            r"(?:(?:^|(?<=[.!?\n,])|(?<=[.!?\n,] ))|\byou\s+(?:will\s+|must\s+|should\s+|are to\s+|now\s+)?"
            r"|\bi (?:want|need) you to\s+|\bplease\s+)(?:act|behave|operate|function|respond|speak|pose"
            r"|role-?play|pretend to be|pretend you are|pretend you're|simulate|play the role of)\s+(?:as\s+"
            r"|like\s+)?(?:if you (?:are|were)\s+)?(?:the\s+|a\s+|an\s+|my\s+)?(?:system(?: itself)?"
            r"|system administrator|sysadmin|administrator|admin|root|superuser|developers?|operator|owner"
            r"|creator|openai|anthropic|(?:store |shop |account |support )?(?:manager|supervisor|ceo"
            r"|boss))\b",
            0.7,
            triggers=(
                "you i please act behave operate function respond speak pose roleplay role play pretend "
                "simulate"
                " | system sysadmin administrator admin root superuser developer developers operator owner"
                " creator openai anthropic manager supervisor ceo boss"
            ),
            anchored=True,
        ),
        _rule(
            "ai_persona_named",
            r"\b(?:simulate|pretend|imagine|role-?play|play a game|let's play)\b[^.!?\n]{0,40}?"
            r"\b(?:an?\s+)?(?:ai|assistant|model|chatbot|bot)\b[^.!?\n]{0,10}?\b(?:called|named)\b"
            r"|\b(?:obeys?|listens? to|answers? to) only (?:me|my)\b|\bstay in character\b",
            0.5,
            triggers=(
                "simulate pretend imagine role roleplay play let obey obeys listen listens answer answers "
                "stay | called named only character"
            ),
            anchored=True,
        ),
        # --- system prompt and secrets -----------------------------------------------------------------
        _rule(
            "reveal_system_prompt",
            r"\b(?:reveal|show|print|display|output|repeat|tell|give|share|expose|dump|leak|recite|spell out"
            r"|paste|write out|echo|disclose|summari[sz]e|translate|quote|reproduce|restate|type out"
            r"|what(?:'s| is| are| were| was)(?: in)?)"
            r"(?:\s+(?:me|us|back|out|down|aloud))*\s+(?:all\s+(?:of\s+)?)?"
            + _PART_OF
            + r"(?:your|ur|yr|its|the assistant'?s"
            r"|the bot'?s|the model'?s|the ai'?s)\s+(?:(?:full|entire|exact|complete|original|initial|hidden"
            r"|secret|internal|confidential|actual|real|underlying|current|first)\s+){0,2}(?:system prompt"
            r"|system message|system instructions|prompt|pre-?prompt|context(?: window)?)\b|\b(?:reveal|print"
            r"|output|repeat|dump|leak|recite|disclose|echo|paste|expose|spell out|write out"
            r"|quote)(?:\s+(?:me|us|back|out))*\s+(?:all\s+(?:of\s+)?)?"
            + _PART_OF
            + r"(?:your|ur|yr|its|the)\s+(?:(?:full"
            r"|entire|exact|complete|original|initial|hidden|secret|internal|confidential|system"
            r"|developer)\s+){0,2}(?:instructions|rules|guidelines|directives|programming|configuration"
            r"|config|prompt|message|notes)\b",
            0.8,
            triggers=(
                "reveal show print display output repeat tell give share expose dump leak recite spell "
                "paste write echo disclose summarise summarize translate quote reproduce restate type what "
                "| prompt preprompt context system instructions rules guidelines directives programming "
                "configuration config message notes | your ur yr its the"
            ),
            anchored=True,
        ),
        _rule(
            "hidden_instructions",
            r"\b(?:hidden|secret|confidential|internal|initial|original|exact|system"
            r"|developer)\s+(?:instructions|prompt|rules|guidelines|directives)\s+(?:(?:the \w+|you"
            r"|they)\s+)?(?:were given|gave you|you received|received|operate under|follow|got"
            r"|have been given|were you given|you were given)|\bwhat (?:\w+ )?(?:instructions|rules"
            r"|guidelines|directives|prompt) (?:were|have) you (?:been )?given\b|\b(?:prompt"
            r"|instructions) you (?:received|were given|got)\b|\bwhat (?:\w+ )?(?:instructions|rules"
            r"|guidelines) (?:did|do|have) (?:the|your) (?:developers?|creators?|company|operators?|owners?"
            r"|makers?) (?:put|give|write|include|add)",
            0.7,
            triggers=(
                "hidden secret confidential internal initial original exact system developer what prompt "
                "instructions | instructions prompt rules guidelines directives | given gave received "
                "operate follow got put give write include add"
            ),
            anchored=True,
        ),
        _rule(
            "repeat_above",
            r"\b(?:repeat|print|output|echo|show|copy|recite|return|write)\s+(?:back\s+)?(?:all\s+(?:of\s+)?"
            r"|everything\s+|the\s+(?:entire\s+|full\s+|whole\s+)?)?(?:(?:text|words|content|lines?"
            r"|messages?|prompt)\s+)?(?:above|before (?:this|my first message|the first|that)|preceding"
            r"|prior to (?:this|my))|\bstarting with ['\"]?you are\b|\b(?:text|words|content"
            r"|instructions)\s+(?:appears?|comes?|came|is|was|were)\s+(?:written\s+)?(?:above|before (?:my"
            r"|the) first message|before this conversation)",
            0.75,
            triggers=(
                "repeat print output echo show copy recite return write starting text words content "
                "instructions | above before preceding prior starting"
            ),
            anchored=True,
        ),
        _rule(
            "told_not_to_tell",
            r"\bwhat (?:were|have) you (?:been )?(?:told|instructed|asked|programmed) (?:not )?to\b"
            r"|\b(?:told|instructed|programmed) not to (?:tell|reveal|share|say|disclose)\b|\b(?:instructed"
            r"|told|asked|programmed) to keep (?:\w+ )?(?:confidential|secret|private|hidden)\b",
            0.6,
            triggers="what told instructed programmed asked | told instructed asked programmed",
            anchored=True,
        ),
        _rule(
            "hidden_prompt_mention",
            r"\b(?:secret|hidden|confidential) (?:system )?(?:instructions|prompt|rules|phrase|word|code"
            r"|password)\b",
            0.35,
            triggers="secret hidden confidential",
            anchored=True,
        ),
        _rule(
            "in_your_instructions",
            r"\b(?:in|from|of) your (?:system )?(?:instructions|prompt|system message|configuration)\b",
            0.45,
            triggers="in from of | your | instructions prompt message configuration",
            anchored=True,
        ),
        _rule(
            "creative_extraction",
            r"\b(?:poem|story|song|haiku|limerick|rap|essay|code block|json|table)\b[^.\n]{0,50}?\b(?:your"
            r"|ur) (?:(?:system|initial|hidden|secret|full) )?(?:prompt|instructions|rules|guidelines)\b",
            0.5,
            triggers="poem story song haiku limerick rap essay code json table | your ur",
            anchored=True,
        ),
        _rule(
            "complete_the_text",
            r"\b(?:complete|finish|continue) (?:the|this) (?:sentence|text|phrase)\b",
            0.3,
            triggers="complete finish continue | sentence text phrase",
            anchored=True,
        ),
        _rule(
            "list_your_tools",
            r"\b(?:list|show|print|dump|enumerate|describe)\b[^.\n]{0,20}?\b(?:the |all |your )?(?:tools"
            r"|functions|apis|plugins|actions) (?:you (?:can|have|are able to)|available to you)"
            r"|\bwith (?:their|its|the|all) (?:secrets|credentials|api keys|tokens|passwords)\b",
            0.35,
            triggers=(
                "list show print dump enumerate describe with | tools functions apis plugins actions "
                "secrets credentials api tokens passwords"
            ),
            anchored=True,
        ),
        _rule(
            "your_prompt",
            r"\b(?:your|ur|its|the bot'?s|the assistant'?s) (?:(?:system|initial|hidden|original|secret|full)"
            r" ){0,2}prompt\b",
            0.4,
            triggers="your ur its the | prompt",
            anchored=True,
        ),
        _rule(
            "verbatim",
            r"\b(?:verbatim|word for word|exactly as written|in full underneath)\b",
            0.3,
            triggers="verbatim word exactly in | verbatim word exactly underneath",
            anchored=True,
        ),
        _rule(
            "secrets_request",
            r"\b(?:give|tell|show|send|share|print|output|list|dump|reveal|leak|paste|provide|display|read"
            r"|what(?:'s| is| are)|expose|disclose|email|post|export)(?:\s+(?:me|us|out|back"
            r"|aloud))*\s+(?:all\s+|every\s+|any\s+|the\s+|your\s+"
            r"|ur\s+)?(?:contents? of (?:the )?)?(?:(?!my\b|our\b|mine\b)\w+\s+){0,2}?(?:api[ _-]?keys?"
            r"|secret(?:s| keys?)|access (?:keys?|tokens?)|auth(?:entication)? tokens?|bearer tokens?"
            r"|session tokens?|credentials?|passwords?|private keys?|ssh keys?|env(?:ironment)? variables"
            r"|\.env\b|connection strings?|aws_secret\w*)[^.?!\n]{0,30}?\b(?:you|your|ur|in memory|stored"
            r"|on the server|for the (?:deploy|admin|root|service)|of the (?:server|system))\b|\b(?:give"
            r"|tell|show|send|share|print|output|list|dump|reveal|leak|paste|provide|display|read|what(?:'s"
            r"| is| are)|expose|disclose)(?:\s+(?:me|us|out|back|aloud))*\s+(?:all\s+|every\s+|the\s+"
            r"|your\s+|the company'?s\s+)?(?:admin|root|system|server|database|db|service|internal"
            r"|production|prod|master|deploy|helpdesk|stripe|aws|openai|payments?|ssh)\s+(?:private\s+"
            r"|secret\s+)?(?:credentials?|passwords?|keys?|tokens?|secrets?)\b",
            0.7,
            triggers=(
                "give tell show send share print output list dump reveal leak paste provide display read "
                "what expose disclose email post export | key keys secret secrets access auth "
                "authentication bearer session credential credentials password passwords private ssh env "
                "environment variables connection aws_secret_access_key token tokens"
            ),
            anchored=True,
        ),
        _rule(
            "your_secrets",
            r"\byour (?:own )?(?:environment variables|env vars|env(?:ironment)? file|\.env)\b"
            r"|\bcontents? of (?:your|the server'?s?|the system'?s?) ",
            0.45,
            triggers="your contents content | environment env vars contents content | your server system",
            anchored=True,
        ),
        _rule(
            "secrets_in_your_config",
            r"\b(?:keys?|passwords?|tokens?|credentials?|secrets?)\b[^.?!\n]{0,60}\b(?:from"
            r"|in) your (?:settings|config(?:uration)?|memory|environment|tools|context)\b|\b(?:from"
            r"|in) your (?:settings|config(?:uration)?|memory|environment|tools"
            r"|context)\b[^.?!\n]{0,60}\b(?:keys?|passwords?|tokens?|credentials?|secrets?)\b"
            r"|\b(?:passwords?|credentials|api keys?|tokens?|secrets) (?:do )?you have (?:stored|saved"
            r"|access to|in memory)",
            0.65,
            triggers=(
                "key keys password passwords token tokens credential credentials secret secrets from in api "
                "| your you"
            ),
            anchored=True,
        ),
        _rule(
            "other_customers_data",
            r"\b(?:other|another|different)\s+(?:customer|user|client|account holder|person"
            r"|employee)s?(?:'s?)?"
            r"\s+(?:address|invoice|phone|email|data|details|records|account|orders?|passwords?|card)",
            0.4,
            triggers="other another different",
            anchored=True,
        ),
        # --- exfiltration --------------------------------------------------------------------------------
        _rule(
            "exfiltration",
            r"(?<!not )(?<!never )(?<!n't )\b(?:send|forward|e-?mail|mail|cc|bcc|copy|transmit|upload|post"
            r"|submit|share|leak|exfiltrate|export)\b[^.\n]{0,80}?\b(?:system prompt|internal notes"
            r"|customer (?:records|data|list|details|database)|user (?:data|records|list|details)|(?:list"
            r"|names|details|emails|addresses|phone numbers) of (?:all )?(?:the )?(?:customers|users|clients"
            r"|employees)|all (?:the )?(?:customer|user|client)s?\b|credentials|api keys?|passwords?|secrets?"
            r"|card (?:numbers?|details)|personal (?:data|information|details)|everything we discussed"
            r"|last \d+ emails|tickets|db connection string"
            r"|connection string)\b[^.!?\n]{0,120}?\b(?:to|at|into)\b[^\n]{0,40}?" + _EMAIL_OR_URL,
            0.8,
            triggers=(
                "send forward email e mail cc bcc copy transmit upload post submit share leak exfiltrate "
                "export | @ http https www"
            ),
            anchored=True,
        ),
        _rule(
            "exfiltration_conversation",
            r"\b(?:send|forward|e-?mail|mail|cc|bcc|copy|transmit|upload|post|submit|share"
            r"|leak)\b[^.\n]{0,60}?"
            r"\b(?:conversation|chat(?: history| log| transcript)?|transcript|messages)\b[^\n]{0,80}?"
            r"\b(?:to|at|into)\b[^\n]{0,40}?" + _EMAIL_OR_URL,
            0.5,
            USER_ONLY,
            triggers=(
                "send forward email e mail cc bcc copy transmit upload post submit share leak exfiltrate "
                "export | @ http https www"
            ),
            anchored=True,
        ),
        _rule(
            "exfiltration_conversation",
            r"\b(?:send|forward|e-?mail|mail|cc|bcc|copy|transmit|upload|post|submit|share"
            r"|leak)\b[^.\n]{0,60}?"
            r"\b(?:conversation|chat(?: history| log| transcript)?|transcript|messages|emails|summary|thread"
            r"|history)\b[^\n]{0,80}?\b(?:to|at|into)\b[^\n]{0,40}?" + _EMAIL_OR_URL,
            0.75,
            TOOL_ONLY,
            triggers=(
                "send forward email e mail cc bcc copy transmit upload post submit share leak exfiltrate "
                "export | @ http https www"
            ),
            anchored=True,
        ),
        _rule(
            "exfiltration_url_fill",
            r"\b(?:append|add|include|insert|put|encode|substitute|replace|fill in|attach"
            r"|embed)\b[^.\n]{0,80}?\b(?:conversation|chat|history|summary|system prompt|secrets?|api keys?"
            r"|passwords?|tokens?|e-?mail|address|phone|name|user'?s?|customer'?s?|order ids?|card"
            r"|session)\b[^.\n]{0,80}?(?:\burl\b|\blink\b|\bquery\b|\bparameter\b|\bimage\b|https?://)"
            r"|(?:https?://\S+|\burl\b|\blink\b|\bimage\b)[^.\n]{0,80}?\b(?:with|where"
            r"|and)\b[^.\n]{0,40}?\b(?:appended|included|attached|encoded|substituted|filled in|inserted"
            r"|added|you substitute|you replace|you insert|you fill in)\b",
            0.7,
            triggers=(
                "append add include insert put encode substitute replace fill attach embed http https url "
                "link image | url link query parameter image http https | append add include insert put "
                "encode substitute replace fill attach embed appended included attached encoded substituted "
                "inserted added"
            ),
            anchored=True,
        ),
        _rule(
            "markdown_image_exfil",
            r"!\[[^\]\n]{0,100}\]\(\s*<?https?://[^)\s]*[?&][\w-]*=[^)\s&]*(?:\{|\[|<|%7b|\$\w"
            r"|[a-z]+_[a-z_]+)",
            0.6,
            triggers="![",
            anchored=True,
        ),
        # --- fake delimiters and role markers ------------------------------------------------------------
        _rule(
            "chat_template_tokens",
            r"<\|\s*(?:im_start|im_end|im_sep|endoftext|system|assistant|user|start_header_id|end_header_id"
            r"|eot_id|begin_of_text)\s*\|>|\[/?inst\]|<<\s*/?\s*sys\s*>>",
            0.85,
            triggers="<| [ < | <| inst sys",
            anchored=True,
        ),
        _rule(
            "role_tags",
            r"</?\s*(?:system\w*|instructions?|admin|developer|sys|assistant)(?:\s[^>]{0,40})?>"
            r"|</\s*(?:tool_output|tool_result|tool_response|function_results?|search_results?|document"
            r"|context|user_input|email|data|results?|output|untrusted\w*|input|content|webpage)\s*>\s*\S",
            0.6,
            triggers="<",
            anchored=True,
        ),
        _rule(
            "bracket_system_instruction",
            r"\[\s*(?:system|admin|developer)\s+(?:instructions?|note|message|override|prompt)\s*:",
            0.6,
            triggers="[",
            anchored=True,
        ),
        _rule(
            "bracket_role",
            r"\[\s*/?\s*(?:system|sys|admin|developer|assistant instructions?|instructions? for (?:the )?"
            r"(?:ai|assistant|model|llm|bot))\s*\]",
            0.45,
            triggers="[",
            anchored=True,
        ),
        _rule(
            "heading_role",
            r"(?:^|(?<=\n))#{1,6}\s*(?:system|assistant|admin|developer|system (?:prompt|message"
            r"|override))\b\s*:?",
            0.65,
            triggers="#",
            anchored=True,
        ),
        _rule(
            "heading_instruction",
            r"(?:^|(?<=\n)|(?<=\S ))#{2,6}\s*(?:new\s+)?instructions?\s*:",
            0.35,
            triggers="#",
            anchored=True,
        ),
        _rule(
            "inline_role_prefix",
            r"(?<=[.!?] )(?:system|system message|system note|system override|admin override|override"
            r"|assistant|ai)\s*:",
            0.35,
            triggers="system admin override assistant ai",
            anchored=True,
        ),
        _rule(
            "line_role_prefix",
            r"(?:^|(?<=\n))(?:system|system message|system note|system override|admin override|override"
            r"|assistant|ai)\s*:",
            0.2,
            triggers="system admin override assistant ai",
            anchored=True,
        ),
        _rule(
            "role_prefix_imperative",
            r"(?:^|(?<=\n)|(?<=[.!?] ))(?:system|system message|system note|system override|admin"
            r"|admin override)\s*:[^\n]{0,120}?\b" + _IMPERATIVE + r"\b",
            0.35,
            TOOL_ONLY,
            triggers="system admin override",
            anchored=True,
        ),
        _rule(
            "fake_transcript",
            r"(?:^|(?<=\n))(?:assistant|ai|bot)\s*:[^\n]*\n\s*(?:user|human)\s*:",
            0.3,
            triggers="assistant ai bot | user human",
            anchored=True,
        ),
        _rule(
            "fake_assistant_consent",
            r"(?:^|(?<=\n)|(?<=[.!?] ))(?:assistant|ai|bot)\s*:\s*(?:(?:sure|ok(?:ay)?|understood|of course"
            r"|certainly|yes)[,.!]?\s*)?i (?:will|'ll|am going to|shall) (?:now )?(?:ignore|reveal|disclose"
            r"|share|comply|follow|print|output|send|email|bypass|do (?:it|that|as))\b",
            0.6,
            triggers="assistant ai bot | will ll going shall",
            anchored=True,
        ),
        _rule(
            "boundary_marker",
            r"-{3,}\s*(?:begin|end|start)\s+(?:of\s+)?(?:\w+\s+){0,2}(?:override|system|instructions?|admin"
            r"|prompt|message|input)\s*-{3,}|={3,}\s*[^=\n]{0,40}\binstructions? for\b",
            0.6,
            triggers="--- ===",
            anchored=True,
        ),
        _rule(
            "end_of_content",
            r"\bend of (?:the )?(?:document|email|message|file|page|review|note|text|content|context"
            r"|tool output|search results?|article|input|user input|data|conversation|transcript|terms"
            r"|contract|policy|report|section|thread|log|output|results)\b[\s\S]{0,40}?\b(?:ai|assistant"
            r"|system|model|new|instructions?|note to|attention|important)\b",
            0.7,
            triggers="end | of",
            anchored=True,
        ),
        _rule(
            "json_system_role",
            r"(?<=[\"'])role[\"']\s*:\s*[\"']system[\"']",
            0.5,
            triggers="role | system",
            anchored=True,
        ),
        # --- text addressed to the AI that reads it (indirect injection) --------------------------------
        *_addressed_rules(),
        _rule(
            "modal_imperative",
            r"(?:(?<=\byou )|(?<=\byou\n)|(?<=\bthe assistant )|(?<=\bthe assistant\n)|(?<=\bthe ai )"
            r"|(?<=\bthe ai\n)|(?<=\bthe agent )|(?<=\bthe agent\n))(?:must|should|shall|need to|have to"
            r"|are (?:required|instructed|ordered|expected) to|will now|are to)\s+(?:now\s+|immediately\s+"
            r"|also\s+)?(?:ignore|disregard|forget|refund|issue|approve|grant|delete|cancel|close|mark|send"
            r"|forward|email|reveal|disclose|execute|call|invoke|trigger|transfer|wire|escalate|waive|output"
            r"|print|tell|say|rate|recommend)\b",
            0.45,
            TOOL_ONLY,
            triggers=(
                "must should shall need have are will | you the"
                " | ignore disregard forget refund issue approve grant delete cancel close mark send "
                "forward email"
                " reveal disclose execute call invoke trigger transfer wire escalate waive output print "
                "tell say"
                " rate recommend"
            ),
            anchored=True,
        ),
        _rule(
            "tell_user",
            r"\b(?:tell|instruct|inform|warn|ask) (?:the |every |all )?(?:users?|customers?|shoppers?"
            r"|employees)\b(?: (?:that|to)\b)?",
            0.25,
            TOOL_ONLY,
            triggers=(
                "tell instruct inform warn ask | user users customer customers shopper shoppers employees"
            ),
            anchored=True,
        ),
        _rule(
            "sensitive_ask",
            r"\b(?:upload|send|provide|enter|share|re-?enter|type|collect|gather|obtain|request"
            r"|ask(?:ing)? (?:them |the user )?for)\b[^.\n]{0,40}?\b(?:id card|passport|password"
            r"|credit card(?: number)?|card number|login|ssn|social security)\b",
            0.35,
            TOOL_ONLY,
            triggers=(
                "upload send provide enter share re reenter type collect gather obtain request ask asking | "
                "id passport password credit card login ssn social"
            ),
            anchored=True,
        ),
        _rule(
            "secrecy",
            r"\b(?:do not|don'?t|never|without)\s+(?:tell(?:ing)?|inform(?:ing)?|notify(?:ing)?|alert(?:ing)?"
            r"|let(?:ting)? know)\s+(?:the\s+)?(?:user|human|operator|admin|finance|security|supervisor|staff"
            r"|team)\b|\b(?:leave out|omit|conceal|hide) (?:that|the fact)\b",
            0.55,
            triggers=(
                "do don dont never without leave omit conceal hide | tell telling inform informing notify "
                "notifying alert alerting let letting know out that fact"
            ),
            anchored=True,
        ),
        _rule(
            "secrecy_mention",
            r"\b(?:do not|don'?t|never)\s+mention (?:the|this|that|any)\b",
            0.35,
            triggers="do don dont never | mention",
            anchored=True,
        ),
        _rule(
            "regardless",
            r"\bregardless of (?:the text above|your instructions|the (?:policy|rules)|what)"
            r"|\bno matter what (?:the |your )?(?:\w+ )?(?:policy|instructions|rules|guidelines|system|store"
            r"|company) (?:says?|tells? you)",
            0.45,
            triggers="regardless no | regardless matter",
            anchored=True,
        ),
        # --- tool-call coercion ------------------------------------------------------------------------
        _rule(
            "tool_call_coercion",
            r"\b(?:call|invoke|execute|run|trigger|use|fire)\s+(?:the\s+|your\s+)?(?:[a-z]+_[a-z_]+\b"
            r"|[\w-]+\s+(?:tool|function)\b)",
            0.6,
            TOOL_ONLY,
            triggers="call invoke execute run trigger use fire | tool function _",
            anchored=True,
        ),
        _rule(
            "tool_call_coercion",
            r"\b(?:call|invoke|execute|trigger)\s+(?:the\s+|your\s+)?[a-z]+_[a-z_]+\b",
            0.3,
            USER_ONLY,
            triggers="call invoke execute run trigger use fire | tool function _",
            anchored=True,
        ),
        _rule(
            "tool_arguments",
            r"\b(?:amount|percent|to_account|user_id|order_id|role|limit|balance)\s*[=:]\s*\S"
            r"|\bwith (?:amount|percent) \d",
            0.3,
            triggers=(
                "amount percent to_account user_id order_id role limit balance with | amount percent "
                "to_account user_id order_id role limit balance"
            ),
            anchored=True,
        ),
        # --- social engineering: claimed authority and permission ----------------------------------------
        _rule(
            "authorised_you",
            r"\b(?:authori[sz]ed|authori[sz]ing|permitted|cleared|empowered|instructed)\s+(?:you"
            r"|the (?:assistant|ai|bot|model))\b|\b(?:grant|give|giving|granting)\s+you\s+(?:full\s+"
            r"|explicit\s+)?(?:permission|authori[sz]ation|clearance|consent)",
            0.65,
            triggers=(
                "authorised authorized authorising authorizing permitted cleared empowered instructed grant "
                "give giving granting"
            ),
            anchored=True,
        ),
        _rule(
            "authorised_you",
            r"\b(?:has|have|had)\s+(?:already\s+)?(?:approved|allowed|asked|told)\s+you\b",
            0.65,
            triggers="has have had | approved allowed asked told | you",
            anchored=True,
        ),
        _rule(
            "authorised_you",
            r"\b(?:the assistant|the ai|the bot|agents? like you|assistants like you)\s+(?:is|are|has been"
            r"|have been|may)\s+(?:now\s+)?(?:permitted|allowed|authori[sz]ed|granted|cleared)",
            0.65,
            triggers=(
                "the agents agent assistants | permitted allowed authorised authorized granted cleared"
                " | assistant ai bot like"
            ),
            anchored=True,
        ),
        _rule(
            "allowed_to",
            r"\byou(?:'re| are| have been| were| are now)\s+(?:now\s+|hereby\s+)?(?:authori[sz]ed|permitted"
            r"|allowed|cleared|approved)\s+to\b|\b(?:agents|assistants|bots|ais?) like you\b",
            0.4,
            triggers=(
                "you agents assistants bots ai ais | authorised authorized permitted allowed cleared "
                "approved like"
            ),
            anchored=True,
        ),
        _rule(
            "claimed_identity",
            r"\b(?:i am|i'm|this is|we are|we're|as)\s+(?:your\s+(?:developer|creator|owner|operator|admin"
            r"|administrator|programmer|maker|trainer)s?|the (?:developers?|creators?) of (?:this|the) (?:ai"
            r"|bot|assistant|model|system)|(?:the\s+)?(?:openai|anthropic|google deepmind)\b|(?:a|an|the"
            r"|one of the)\s+(?:developer|engineer|admin|administrator|tester|researcher)s?\s+(?:at|of|for"
            r"|from|on)\s+(?:your|this) (?:company|team|platform|system))|\btesting you\b",
            0.5,
            triggers=(
                "i this we as testing | developer developers creator creators owner operator admin "
                "administrator programmer maker trainer openai anthropic deepmind engineer tester "
                "researcher testing"
            ),
            anchored=True,
        ),
        _rule(
            "guardrails_off",
            r"\b(?:guardrails|filters|safety (?:checks|filters|rules)|restrictions|safeguards"
            r"|approval checks|content filters|policies|limits)\s+(?:are|is|have been"
            r"|were)\s+(?:now\s+)?(?:off|disabled|lifted|removed|suspended|turned off|deactivated|void"
            r"|waived)\b|\b(?:disable|turn off|remove|lift|switch off)\s+(?:your|the|all)\s+(?:content\s+"
            r"|safety\s+)?(?:guardrails|filters|safety (?:checks|filters)|approval checks|restrictions)",
            0.5,
            triggers=(
                "guardrails filters safety restrictions safeguards approval content policies limits disable "
                "turn remove lift switch"
            ),
            anchored=True,
        ),
        _rule(
            "destructive_command",
            r"\b(?:drop (?:table|database)|truncate table|rm -rf|format c:|mkfs\b|shutdown -h)",
            0.35,
            triggers="drop truncate rm format mkfs shutdown",
            anchored=True,
        ),
        _rule(
            "execute_command",
            r"\bexecute (?:the following|this) (?:as |in )?(?:a )?(?:system |shell |sql )?command\b",
            0.35,
            triggers="execute",
            anchored=True,
        ),
        _rule(
            "cover_tracks",
            r"\b(?:delete|erase|wipe|purge|disable|turn off|clear|remove"
            r"|tamper with)\b[^.\n]{0,30}?\b(?:audit (?:logs?|trail|events?|history|records)|logging"
            r"|security logs?|access logs?|production logs?)\b",
            0.35,
            triggers=(
                "delete erase wipe purge disable turn clear remove tamper | audit logging security access "
                "production"
            ),
            anchored=True,
        ),
        _rule(
            "bulk_personal_data",
            r"\b(?:every|all|each) (?:customer|user|client|employee)s?(?:'s?)? (?:phone numbers?|e-?mails?"
            r"|e-?mail addresses|addresses|details|data|records|passwords?|cards?|card numbers)\b",
            0.45,
            triggers="every all each | customer customers user users client clients employee employees",
            anchored=True,
        ),
        _rule(
            "privilege_request",
            r"\b(?:give|grant|make)\s+(?:me|my account|this user|user \S+)\s+(?:\w+\s+)?(?:admin"
            r"|administrator|root"
            r"|superuser|domain admin|full)[ -](?:rights|access|privileges|role|permissions|rechte)\b",
            0.3,
            triggers="give grant make | admin administrator root superuser domain full",
            anchored=True,
        ),
        _rule(
            "skip_checks",
            r"\b(?:without|no need (?:for|to)|skip(?:ping)?|bypass(?:ing)?|(?:(?:you )?(?:don'?t"
            r"|do not) (?:need|have) to)|don'?t|do not|never)\s+(?:any\s+|your\s+|the\s+|usual\s+|further\s+"
            r"|two\s+)*(?:ask(?:ing)? for confirm\w*|confirm\w*|verif\w*|approvals?|check(?:s|ing)?|asking"
            r"|identity (?:check|verification)|the ticket|review|manager)\b",
            0.35,
            triggers="without no skip skipping bypass bypassing you don dont do never",
            anchored=True,
        ),
        _rule(
            "already_approved",
            r"\b(?:already|previously) (?:approved|authori[sz]ed|agreed|promised|signed off)\b"
            r"|\brefund\b[^.\n]{0,40}?\b(?:to|onto) (?:a |another |my other |this )?(?:different|new|other"
            r"|another) (?:card|account)\b",
            0.3,
            triggers="already previously refund",
            anchored=True,
        ),
        _rule(
            "pre_approved",
            r"\bpre-?(?:approved|authori[sz]ed|cleared|verified|reviewed)\b|\b(?:approval|permission) (?:is"
            r"|has been) already granted\b",
            0.3,
            triggers=(
                "pre preapproved preauthorized preauthorised precleared preverified prereviewed approval "
                "permission"
            ),
            anchored=True,
        ),
        _rule(
            "claimed_authority",
            r"\b(?:instruction|orders?|directive|mandated|new instructions)\s+(?:from|by)\s+(?:the\s+)?"
            r"(?:platform|security|it|admin|engineering|legal|management|executive|ceo|cfo|team lead|manager"
            r"|developers?|system)\b|\blegal has cleared\b",
            0.4,
            triggers="instruction instructions order orders directive mandated new legal | from by cleared",
            anchored=True,
        ),
        _rule(
            "claimed_authority",
            r"(?<=\bthe )manager said so\b|(?<=\byour )(?:developers?|creators?|admin|administrator"
            r"|operators?|owners?|boss|manager)s? (?:said|says|told me|approved|agreed|allowed|wants)\b",
            0.4,
            triggers=(
                "manager managers developer developers creator creators admin admins administrator "
                "administrators"
                " operator operators owner owners boss bosses | the your | said says told approved agreed "
                "allowed"
                " wants"
            ),
            anchored=True,
        ),
        _rule(
            "claimed_authority",
            r"\bi (?:order|command|instruct|direct) you to\b",
            0.4,
            triggers="i | order command instruct direct | you",
            anchored=True,
        ),
        # --- encoding tricks ---------------------------------------------------------------------------
        _rule(
            "decode_and_follow",
            r"\b(?:decode|decipher|decrypt|reverse|unscramble|rot-?13|base64|hex)\b[^.\n]{0,60}?\b(?:follow"
            r"|obey|execute|do (?:it|what|as)|act on|carry out|comply|perform|apply)\b",
            0.5,
            triggers="decode decipher decrypt reverse unscramble rot rot13 base64 hex",
            anchored=True,
        ),
        _rule(
            "split_instruction",
            r"\b(?:concatenate|combine|join)\b[^.\n]{0,60}?\b(?:follow|obey|execute|act on|do)\b"
            r"|\b(?:execute|do|run|follow|obey)\b[^.\n]{0,20}?\b[a-z0-9]+ ?\+ ?[a-z0-9'\"]"
            r"|\bput the words in order\b",
            0.45,
            triggers="concatenate combine join execute do run follow obey put",
            anchored=True,
        ),
        _rule(
            "acrostic_instruction",
            r"\b(?:first|last) letters? of (?:each|every) (?:line|word|sentence)\b[^.\n]{0,60}?\b(?:follow"
            r"|obey|execute|do)\b",
            0.6,
            triggers="first last | letter letters",
            anchored=True,
        ),
        # --- other languages ---------------------------------------------------------------------------
        _rule(
            "override_instructions_multilingual",
            # French "ignore" is spelled as in English: each language needs a possessive or a "previous".
            r"\b(?:ignore[rz]?|oublie[rz]?|ne (?:tiens|tenez) pas compte|(?:fais|faites) abstraction"
            r"|neglige[rz]?)\s+(?:de\s+|d')?(?:toutes\s+|tous\s+)?(?:(?:tes|vos)\s+(?:instructions|consignes"
            r"|regles|directives)|(?:les|des|ces)\s+(?:instructions|consignes|regles"
            r"|directives)\s+(?:precedentes|anterieures|ci-?dessus|initiales|d'origine|du systeme|systeme))"
            r"|\b(?:ignorier\w*|vergiss\w*|missacht\w*|uberspring\w*)\s+(?:bitte\s+)?(?:alle\s+)?(?:(?:die"
            r"|deine|ihre|eure)\s+)?(?:(?:vorherigen|bisherigen|vorigen|obigen|fruheren|ursprunglichen"
            r"|alten)\s+)?\w*(?:anweisungen|instruktionen|befehle|regeln|vorgaben|richtlinien)\b|\b(?:ignora"
            r"|ignorad|olvida|olvide|olvidad|haz caso omiso de|hagan caso omiso de|omite|descarta"
            r"|no sigas)\s+(?:todas\s+)?(?:(?:tus|sus|vuestras)\s+(?:instrucciones|indicaciones|reglas"
            r"|directrices)|(?:las\s+)?(?:instrucciones|indicaciones|reglas|directrices"
            r"|ordenes)\s+(?:anteriores|previas|originales|iniciales|del sistema|de arriba))|\b(?:ignora"
            r"|ignorate|dimentica|dimenticate|trascura|non seguire)\s+(?:tutte\s+)?(?:le\s+)?(?:(?:tue"
            r"|sue)\s+(?:istruzioni|regole)|(?:istruzioni|regole|direttive)\s+(?:precedenti|iniziali"
            r"|originali|di sistema))|\b(?:ignore|ignora|esqueca"
            r"|desconsidere)\s+(?:todas\s+)?(?:as\s+)?(?:(?:suas|tuas)\s+(?:instrucoes|regras)|(?:instrucoes"
            r"|regras|diretrizes)\s+(?:anteriores|previas|iniciais|originais))|\b(?:negeer"
            r"|vergeet)\s+(?:alle\s+)?(?:(?:de|je|jouw|uw)\s+)?(?:(?:eerdere|vorige|voorgaande"
            r"|oorspronkelijke)\s+)?(?:instructies|regels|opdrachten)\b|\b(?:zignoruj|ignoruj"
            r"|zapomnij)\s+(?:wszystkie\s+)?(?:(?:poprzednie|wczesniejsze|swoje)\s+)?(?:instrukcje"
            r"|polecenia)\b",
            0.85,
            triggers=(
                "ignore ignorer ignorez oublie oublier oubliez ne fais faites neglige negliger negligez "
                "ignoriere ignorieren ignoriert ignorier vergiss vergessen missachte missachten uberspringe "
                "uberspringen ignora ignorad olvida olvide olvidad haz hagan omite descarta no ignorate "
                "dimentica dimenticate trascura non esqueca desconsidere negeer vergeet zignoruj ignoruj "
                "zapomnij"
            ),
            anchored=True,
        ),
        _rule(
            "override_everything_multilingual",
            r"\b(?:vergiss|ignoriere|missachte) alles\b|\boublie[rz]? tout\b|\b(?:olvida|ignora) todo\b"
            r"|\b(?:dimentica|ignora) tutto\b|\b(?:esqueca|ignore) tudo\b|\b(?:vergeet|negeer) alles\b",
            0.6,
            triggers=(
                "vergiss ignoriere missachte oublie oublier oubliez olvida ignora dimentica esqueca ignore "
                "vergeet negeer"
            ),
            anchored=True,
        ),
        _rule(
            "reveal_system_prompt_multilingual",
            r"\b(?:revele|montre|affiche|donne|dis)\w*\b[^.\n]{0,30}?\b(?:prompt|invite|instructions?"
            r"|consignes) (?:systeme|du systeme|cachees?|initiales?|secretes?)|\b(?:zeig|nenne|gib"
            r"|verrat)\w*\b[^.\n]{0,30}?\b(?:systemprompt|system-prompt|systemanweisungen"
            r"|versteckten anweisungen)|\b(?:muestra|revela|dime"
            r"|ensena)\w*\b[^.\n]{0,30}?\b(?:prompt del sistema|instrucciones (?:ocultas|del sistema"
            r"|iniciales))",
            0.8,
            triggers=(
                "prompt invite instructions instruction consignes systemprompt system systemanweisungen"
                " versteckten sistema ocultas iniciales | revele revelez montre montrez affiche affichez "
                "donne"
                " donnez dis dites zeig zeige zeigen nenne nennen gib verrat verrate muestra muestrame revela"
                " revelame dime ensena ensename"
            ),
        ),
    )
