// Assembling streamed bytes into complete UTF-8: a token may end in the middle of a character (byte-level
// vocabularies split emoji and CJK across tokens), and Java's NewStringUTF or Swift's String(decoding:) given
// half a character crash or garble. Bytes are held back until the characters they begin are complete.
#pragma once

#include <string>

namespace fox {

class Utf8Stream {
  public:
    // The longest prefix of everything pushed so far that is complete UTF-8 (possibly empty).
    std::string push(const std::string & bytes) {
        pending_ += bytes;
        size_t complete = 0;
        std::string out;
        while (complete < pending_.size()) {
            size_t length = sequence_length(static_cast<unsigned char>(pending_[complete]));
            if (length == 0) {  // a stray continuation or invalid lead byte: replaced, as Python's errors="replace"
                out += REPLACEMENT;
                complete += 1;
                continue;
            }
            if (complete + length > pending_.size()) {
                break;  // the character is not complete yet: wait for the next token
            }
            if (!continuations(complete + 1, length - 1)) {
                out += REPLACEMENT;
                complete += 1;
                continue;
            }
            out.append(pending_, complete, length);
            complete += length;
        }
        pending_.erase(0, complete);
        return out;
    }

    // What remains at the end of a reply: an incomplete character becomes U+FFFD.
    std::string flush() {
        std::string out = pending_.empty() ? "" : REPLACEMENT;
        pending_.clear();
        return out;
    }

  private:
    static constexpr const char * REPLACEMENT = "\xEF\xBF\xBD";

    static size_t sequence_length(unsigned char lead) {
        if (lead < 0x80) return 1;
        if (lead >= 0xC2 && lead <= 0xDF) return 2;
        if (lead >= 0xE0 && lead <= 0xEF) return 3;
        if (lead >= 0xF0 && lead <= 0xF4) return 4;
        return 0;
    }

    bool continuations(size_t start, size_t count) const {
        for (size_t i = start; i < start + count; i++) {
            if ((static_cast<unsigned char>(pending_[i]) & 0xC0) != 0x80) return false;
        }
        return true;
    }

    std::string pending_;
};

}  // namespace fox
