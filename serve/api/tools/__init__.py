"""Tool calling shared by every API dialect: the tools a request offers, how they reach the model's chat
template, how the model's output is parsed back into calls (streamed: the name first, then argument
fragments as they are generated), and the grammar that makes `required` and named tool choices hold.

    spec.py       Tool, ToolChoice, ToolRequest: the request's tools, validated (400s naming the field)
    formats.py    how a model family writes calls (hermes, llama3_json, mistral, phi4_mini_json, gpt_oss,
                  generic), and which one a model uses: the catalog's tool_format, else recognised from its
                  chat template
    render.py     messages and tools as the chat template expects them (the generic format describes the
                  tools in a system message)
    json_scan.py  where a JSON value ends, read incrementally
    calls.py      ToolCall and the parser's events (ToolCallDelta, ToolCallDone)
    call_object.py one `{"name": ..., "arguments": {...}}` object read incrementally
    parser.py     ToolCallParser: generated text -> content and tool-call events, chunk by chunk
    grammar.py    the GBNF of the calls for tool_choice required / named, and the lazy trigger for auto
    use.py        ToolUse: what one chat request does with tools (the generation core's one entry point)
"""
